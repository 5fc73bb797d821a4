import { checkReadRange, type PageSource } from './page-source.js';

/** An image held in memory (a SharedArrayBuffer passes to a pager worker without copying). */
export class BufferSource implements PageSource {
  readonly sizeBytes: number;
  readonly description: string;
  private readonly bytes: Uint8Array;
  constructor(image: Uint8Array | ArrayBuffer | SharedArrayBuffer, description = 'buffer') {
    this.bytes = image instanceof Uint8Array ? image : new Uint8Array(image);
    this.sizeBytes = this.bytes.length;
    this.description = description;
  }
  async read(offset: number, lengthBytes: number, target: Uint8Array): Promise<void> {
    this.readSync(offset, lengthBytes, target);
  }
  readSync(offset: number, lengthBytes: number, target: Uint8Array): boolean {
    checkReadRange(this, offset, lengthBytes);
    target.set(this.bytes.subarray(offset, offset + lengthBytes));
    return true;
  }
}
