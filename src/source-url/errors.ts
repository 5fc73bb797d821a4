// The one way opening a source by its URL fails before anything is
// contacted: the URL names no kind of source this library opens, or the
// options contradict it. A URL of a known scheme that is malformed is refused
// by its own parser (AddressError for tcp://, S3UrlError for s3://), both
// code EUSAGE as well.
import { UserfaultError } from '../errors.js';

/** A source URL of no scheme this library opens, or of one the caller does not take, or options that do not apply to it. Code EUSAGE (exit status 64). */
export class SourceUrlError extends UserfaultError {
  override readonly code = 'EUSAGE';
  constructor(readonly url: string, reason: string) {
    super(`${JSON.stringify(url)}: ${reason}`);
  }
}
