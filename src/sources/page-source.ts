// A page source: where the pager gets the contents of pages it has not yet filled.
import { UserfaultError } from '../errors.js';

/**
 * Contents of a flat memory image of `sizeBytes`, read asynchronously.
 * Offsets and lengths the pager asks for are page-aligned. A network source
 * implements the same interface: the pager keeps many reads in flight.
 */
export interface PageSource {
  readonly sizeBytes: number;
  /** Short human description ("snapshot /tmp/a.snap", "zero"). */
  readonly description: string;
  /** Fill target[0, length) with the image's bytes at [offset, offset+length). */
  read(offset: number, length: number, target: Uint8Array): Promise<void>;
  /**
   * Whether [offset, offset+length) is known to be all zeroes, so the pager
   * can map the zero page without reading. Optional; absent means "unknown".
   */
  isZero?(offset: number, length: number): boolean;
  /**
   * Optional fast path: fill target now, on the caller's thread, if that
   * costs no waiting (memory, or a page-cache hit); return false to have the
   * pager fall back to read(). Saves a promise and an event-loop round per fetch.
   */
  readSync?(offset: number, length: number, target: Uint8Array): boolean;
  close?(): void | Promise<void>;
}

/** A source whose reads fail is reported with the range it could not read. */
export class SourceReadError extends UserfaultError {
  override readonly code: string = 'ESOURCE';
  constructor(readonly offset: number, readonly lengthBytes: number, message: string, options?: { cause?: unknown }) {
    super(`reading ${lengthBytes} bytes at offset ${offset}: ${message}`, options);
  }
}

export function checkReadRange(source: PageSource, offset: number, length: number): void {
  if (offset < 0 || length < 0 || offset + length > source.sizeBytes) {
    throw new SourceReadError(offset, length, `outside the ${source.sizeBytes}-byte image of ${source.description}`);
  }
}
