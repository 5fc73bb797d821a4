// Payload buffers for frames read in place, reused. A fresh 256 KiB buffer
// costs its 64 page faults on first touch (~250 µs here against ~3 µs to fill
// a buffer already touched), once per READ reply; a pool pays them once. The
// pool lends a buffer to the frame being read; whoever keeps a view of it
// past the frame's handling (a page source lending it to the pager) retains
// it, and releases it when done. A buffer goes back to the free list only
// when every holder released it; one never released is simply left to the
// garbage collector, so a missed release costs speed, never correctness.
// Pure: no I/O.

/** Payloads smaller than this are allocated plainly: they cost no faults worth saving. */
const MIN_POOLED_BYTES = 16 * 1024;
/** Size classes: a payload takes a buffer rounded up to this. */
const CLASS_BYTES = 64 * 1024;

export class PayloadPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  /**
   * Holders of each lent buffer (the frame being read counts as one). Weak:
   * a buffer whose holder never released it is the collector's, not kept
   * here for ever.
   */
  private readonly holders = new WeakMap<ArrayBuffer, number>();
  private lent = 0;
  private freeBytes = 0;
  /** Buffers taken from the free list, and allocated afresh (for the bench and tests). */
  reused = 0;
  allocated = 0;

  /** maxFreeBytes: the most kept on the free list; a buffer released past it is left to the GC. */
  constructor(readonly maxFreeBytes = 16 << 20) {}

  /** A buffer of `length` bytes, not zeroed, lent to the caller (one holder). */
  take(length: number): Uint8Array {
    if (length < MIN_POOLED_BYTES) return uninitialized(length);
    const classBytes = Math.ceil(length / CLASS_BYTES) * CLASS_BYTES;
    const list = this.free.get(classBytes);
    let buffer = list?.pop();
    if (buffer) {
      this.freeBytes -= classBytes;
      this.reused++;
    } else {
      const fresh = Buffer.allocUnsafeSlow(classBytes);
      buffer = fresh.buffer as ArrayBuffer;
      this.allocated++;
    }
    this.holders.set(buffer, 1);
    this.lent++;
    return new Uint8Array(buffer, 0, length);
  }

  /** One more holder of the buffer under `view` (a no-op for memory the pool did not lend). */
  retain(view: Uint8Array): void {
    const count = this.holders.get(view.buffer as ArrayBuffer);
    if (count !== undefined) this.holders.set(view.buffer as ArrayBuffer, count + 1);
  }

  /** A holder is done with the buffer under `view`: nothing may read or write it through that view any more. */
  release(view: Uint8Array): void {
    const buffer = view.buffer as ArrayBuffer;
    const count = this.holders.get(buffer);
    if (count === undefined) return;
    if (count > 1) {
      this.holders.set(buffer, count - 1);
      return;
    }
    this.holders.delete(buffer);
    this.lent--;
    if (this.freeBytes + buffer.byteLength > this.maxFreeBytes) return;
    let list = this.free.get(buffer.byteLength);
    if (!list) this.free.set(buffer.byteLength, (list = []));
    list.push(buffer);
    this.freeBytes += buffer.byteLength;
  }

  /** Buffers lent and not yet released by every holder (one a holder dropped unreleased counts for ever). */
  get lentCount(): number {
    return this.lent;
  }
}

/** A plain Uint8Array of `length` bytes, not zero-filled (Node's unpooled allocation under it). */
export function uninitialized(length: number): Uint8Array {
  const buffer = Buffer.allocUnsafeSlow(length);
  return new Uint8Array(buffer.buffer, buffer.byteOffset, length);
}
