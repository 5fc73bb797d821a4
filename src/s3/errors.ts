// Errors of the object store (S3 and compatible stores): one base class, a
// subclass per condition, each with a stable code, the bucket and key, and the
// store's own error (name, HTTP status) as its cause. Whether trying again may
// help is a field (`transient`): a store that does not answer, answers 5xx or
// asks to slow down may come back; a missing key, a refused signature or an
// object that changed under a restore will not.
import { UserfaultError } from '../errors.js';

export class S3Error extends UserfaultError {
  override readonly code: string = 'ES3';
  /** Whether the same request may succeed later. */
  readonly transient: boolean = false;
}

/** An s3:// URL that cannot be parsed, or options that contradict it. Code EUSAGE (exit status 64). */
export class S3UrlError extends S3Error {
  override readonly code = 'EUSAGE';
  constructor(readonly text: string, reason: string) {
    super(`${JSON.stringify(text)} is not an s3://BUCKET/KEY URL: ${reason}`);
  }
}

/**
 * The bucket or the key does not exist (404). `missing` says which when the
 * store said (its error's name: NoSuchBucket, NoSuchKey); a HEAD's 404 has no
 * body, and then it is either.
 */
export class ObjectNotFoundError extends S3Error {
  override readonly code = 'ES3_NOT_FOUND';
  readonly missing: 'bucket' | 'object' | 'object or bucket';
  constructor(readonly url: string, options?: { cause?: unknown }) {
    const name = (options?.cause as { name?: unknown } | undefined)?.name;
    const missing = name === 'NoSuchBucket' ? 'bucket' : name === 'NoSuchKey' ? 'object' : 'object or bucket';
    const bucket = /^s3:\/\/([^/]+)/.exec(url)?.[1] ?? url;
    super(missing === 'bucket' ? `${url}: the store has no bucket "${bucket}" (create it first, or check the name and --endpoint)`
      : missing === 'object' ? `${url}: no such object`
      : `${url}: no such object (or no such bucket)`, options);
    this.missing = missing;
  }
}

/** The store refused the credentials or the request (401, 403). */
export class StoreDeniedError extends S3Error {
  override readonly code = 'ES3_DENIED';
  constructor(readonly url: string, reason: string, options?: { cause?: unknown }) {
    super(`${url}: the store refused access: ${reason} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile)`, options);
  }
}

/**
 * The object is not the one the restore opened: its ETag changed (a 412 to
 * If-Match, or a reply with another ETag). Its chunks must not be mixed with
 * the first object's index.
 */
export class ObjectChangedError extends S3Error {
  override readonly code = 'ES3_CHANGED';
  constructor(readonly url: string, readonly expectedEtag: string, readonly actualEtag: string | undefined) {
    super(`${url} was replaced while in use: its ETag is ${actualEtag ?? '(another: the store refused If-Match)'}, it was ${expectedEtag}`);
  }
}

/** The store did not answer (connection refused or reset, a timeout) or answered that it cannot now (5xx, 429, SlowDown). */
export class StoreUnavailableError extends S3Error {
  override readonly code = 'ES3_UNAVAILABLE';
  override readonly transient = true;
  constructor(readonly url: string, reason: string, options?: { cause?: unknown }) {
    super(`${url}: the store is unavailable: ${reason}`, options);
  }
}

/**
 * The store's reply breaks what was asked: a range read answered with another
 * length or range, a body longer or shorter than its Content-Length. Transient:
 * a proxy or a connection may have mangled it, and the next reply may be right.
 */
export class StoreResponseError extends S3Error {
  override readonly code = 'ES3_RESPONSE';
  override readonly transient = true;
  constructor(readonly url: string, readonly problem: string, options?: { cause?: unknown }) {
    super(`${url}: the store's reply is wrong: ${problem}`, options);
  }
}

/** Any other refusal by the store (a 4xx the cases above do not cover). */
export class StoreRequestError extends S3Error {
  override readonly code = 'ES3_REQUEST';
  constructor(readonly url: string, readonly status: number | undefined, reason: string, options?: { cause?: unknown }) {
    super(`${url}: the store refused the request${status === undefined ? '' : ` (HTTP ${status})`}: ${reason}`, options);
  }
}
