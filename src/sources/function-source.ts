import { checkReadRange, type PageSource } from './page-source.js';

/** Produces the bytes of [offset, offset+lengthBytes) into target; may be slow (it is awaited). */
export type PageProducer = (offset: number, lengthBytes: number, target: Uint8Array) => void | Promise<void>;

/** Pages computed by a function: generated content, a test gate, an injected delay. */
export class FunctionSource implements PageSource {
  constructor(
    readonly sizeBytes: number,
    private readonly produce: PageProducer,
    readonly description = 'function',
  ) {}
  async read(offset: number, lengthBytes: number, target: Uint8Array): Promise<void> {
    checkReadRange(this, offset, lengthBytes);
    await this.produce(offset, lengthBytes, target);
  }
}
