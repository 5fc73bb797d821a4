// A FIFO of bytes in fixed blocks: push copies into the tail block, shift
// reads from the head block at an offset, and a block is dropped once read.
// Every operation is O(bytes moved), whatever is queued: a JS number[] with
// shift() per byte (what the UART had) is O(queued) per byte, and spreading
// a saved backlog into push(...) overflows the call stack near 500 KB.
const BLOCK_BYTES = 64 * 1024;

export class ByteQueue {
  private readonly blocks: Uint8Array[] = [];
  /** Next byte to read, in blocks[0]. */
  private readOffset = 0;
  /** Next byte to write, in the last block. */
  private writeOffset = 0;
  private queued = 0;

  get lengthBytes(): number {
    return this.queued;
  }

  push(bytes: Uint8Array): void {
    for (let at = 0; at < bytes.length;) {
      if (this.blocks.length === 0 || this.writeOffset === BLOCK_BYTES) {
        this.blocks.push(new Uint8Array(BLOCK_BYTES));
        this.writeOffset = 0;
      }
      const n = Math.min(BLOCK_BYTES - this.writeOffset, bytes.length - at);
      this.blocks[this.blocks.length - 1]!.set(bytes.subarray(at, at + n), this.writeOffset);
      this.writeOffset += n;
      at += n;
    }
    this.queued += bytes.length;
  }

  /** The oldest byte, removed; undefined when empty. */
  shift(): number | undefined {
    if (this.queued === 0) return undefined;
    const byte = this.blocks[0]![this.readOffset++]!;
    this.queued--;
    if (this.queued === 0) {
      // Keep one block for the next push; start it over.
      this.blocks.length = 1;
      this.readOffset = 0;
      this.writeOffset = 0;
    } else if (this.readOffset === BLOCK_BYTES) {
      this.blocks.shift();
      this.readOffset = 0;
    }
    return byte;
  }

  /** A copy of every queued byte, oldest first (the queue is unchanged). */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.queued);
    let at = 0;
    this.blocks.forEach((block, i) => {
      const start = i === 0 ? this.readOffset : 0;
      const end = i === this.blocks.length - 1 ? this.writeOffset : BLOCK_BYTES;
      out.set(block.subarray(start, end), at);
      at += end - start;
    });
    return out;
  }

  clear(): void {
    this.blocks.length = 0;
    this.readOffset = 0;
    this.writeOffset = 0;
    this.queued = 0;
  }
}
