import { checkReadRange, type PageSource } from './page-source.js';

/** Every page reads zero: the pager maps the zero page and never reads. */
export class ZeroSource implements PageSource {
  readonly description = 'zero';
  constructor(readonly sizeBytes: number) {}
  async read(offset: number, lengthBytes: number, target: Uint8Array): Promise<void> {
    checkReadRange(this, offset, lengthBytes);
    target.fill(0, 0, lengthBytes);
  }
  isZero(): boolean {
    return true;
  }
}
