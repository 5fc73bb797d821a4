// One object in an S3-compatible store, through the official client
// (@aws-sdk/client-s3): its size and ETag, range reads checked to the byte,
// and uploads (one PUT, or a multipart upload for large objects). The client
// is configured the way S3 users expect: credentials from the SDK's chain
// (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE
// and ~/.aws), the region from AWS_REGION, the endpoint from --endpoint or
// AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, and path-style addressing
// (http://HOST/BUCKET/KEY) for a self-hosted endpoint, where virtual-hosted
// bucket names rarely resolve.
//
// The SDK's own retries are off (maxAttempts 1): the callers decide, since a
// restore must keep a blocked fault waiting until its own deadline and no
// longer, and a push must not resend parts blindly.
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import type { Readable } from 'node:stream';
import {
  ObjectChangedError,
  ObjectNotFoundError,
  S3Error,
  StoreDeniedError,
  StoreRequestError,
  StoreResponseError,
  StoreUnavailableError,
} from './errors.js';
import { formatS3Url, type S3Location } from './s3-url.js';

// The SDK warns once per process that its releases after January 2027 need
// Node 22; this project pins a release that runs on Node 20 (package-lock),
// and the warning would land in every command's stderr and in --json output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export interface S3StoreOptions {
  /** http(s)://HOST[:PORT] of the store; default AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS's own for the region. */
  endpoint?: string;
  /** Default AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1. */
  region?: string;
  /** Path-style URLs (http://HOST/BUCKET/KEY). Default: on with a custom endpoint, off for AWS. */
  pathStyle?: boolean;
  /** Connections kept to the store (default 64): the bound on requests in flight at the HTTP layer. */
  maxSockets?: number;
  /** One request, from sending it to the last byte of its body (default 10 s); a slower one is aborted as unavailable. */
  requestTimeoutMs?: number;
}

/** What HEAD says of an object. */
export interface ObjectInfo {
  readonly sizeBytes: number;
  /** The object's ETag, quotes included, as the store sends it. */
  readonly etag: string;
}

export interface RangeReadOptions {
  /** The ETag the object must still have (sent as If-Match, and compared with the reply's). */
  etag?: string;
  signal?: AbortSignal;
}

/** What a reader of snapshot objects needs from a store: tests put hostile ones behind it. */
export interface ObjectReader {
  /** s3://BUCKET/KEY. */
  readonly url: string;
  /** "s3://BUCKET/KEY at http://127.0.0.1:9000". */
  readonly description: string;
  head(signal?: AbortSignal): Promise<ObjectInfo>;
  /** Exactly the bytes [offset, offset + lengthBytes), or a typed S3Error (StoreResponseError when the reply is not exactly that). */
  readRange(offset: number, lengthBytes: number, options?: RangeReadOptions): Promise<Uint8Array>;
  close(): void;
}

/** A part of an upload: its bytes are produced when the part is sent. */
export type UploadBody = Uint8Array;

/** S3's limits on multipart uploads. */
export const MIN_PART_BYTES = 5 * 1024 * 1024;
export const MAX_PARTS = 10_000;
export const MAX_SINGLE_PUT_BYTES = 5 * 1024 * 1024 * 1024;

interface ResolvedOptions {
  endpoint: string | undefined;
  region: string;
  pathStyle: boolean;
  maxSockets: number;
  requestTimeoutMs: number;
}

export function resolveStoreOptions(options: S3StoreOptions = {}, env: NodeJS.ProcessEnv = process.env): ResolvedOptions {
  const endpoint = options.endpoint ?? (env.AWS_ENDPOINT_URL_S3 || undefined) ?? (env.AWS_ENDPOINT_URL || undefined);
  if (endpoint !== undefined) {
    let parsed: URL;
    try {
      parsed = new URL(endpoint);
    } catch {
      throw new StoreRequestError(endpoint, undefined, 'the endpoint is not a URL (http://HOST:PORT)');
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new StoreRequestError(endpoint, undefined, 'the endpoint is not http:// or https://');
  }
  return {
    endpoint,
    region: options.region ?? (env.AWS_REGION || undefined) ?? (env.AWS_DEFAULT_REGION || undefined) ?? 'us-east-1',
    pathStyle: options.pathStyle ?? endpoint !== undefined,
    maxSockets: options.maxSockets ?? 64,
    requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
  };
}

/** A client for one store, shared by the objects read through it. */
export class S3Store {
  readonly client: S3Client;
  readonly settings: ResolvedOptions;

  constructor(options: S3StoreOptions = {}) {
    this.settings = resolveStoreOptions(options);
    const { endpoint, region, pathStyle, maxSockets } = this.settings;
    this.client = new S3Client({
      region,
      ...(endpoint === undefined ? {} : { endpoint }),
      forcePathStyle: pathStyle,
      maxAttempts: 1,
      requestHandler: { connectionTimeout: this.settings.requestTimeoutMs, httpAgent: { keepAlive: true, maxSockets }, httpsAgent: { keepAlive: true, maxSockets } },
    });
  }

  /** Where the store is, for messages. */
  get where(): string {
    return this.settings.endpoint ?? `AWS S3 (${this.settings.region})`;
  }

  object(location: S3Location): S3Object {
    return new S3Object(this, location);
  }

  close(): void {
    this.client.destroy();
  }
}

export class S3Object implements ObjectReader {
  readonly url: string;
  readonly description: string;
  private readonly ownsStore: boolean;

  constructor(readonly store: S3Store, readonly location: S3Location, options: { ownsStore?: boolean } = {}) {
    this.url = formatS3Url(location);
    this.description = `${this.url} at ${store.where}`;
    this.ownsStore = options.ownsStore ?? false;
  }

  /** An object with a store of its own (closed with it). */
  static open(location: S3Location, options: S3StoreOptions = {}): S3Object {
    return new S3Object(new S3Store(options), location, { ownsStore: true });
  }

  async head(callerSignal?: AbortSignal): Promise<ObjectInfo> {
    const { signal, cleanup } = this.requestSignal(callerSignal);
    let reply;
    try {
      reply = await this.store.client.send(new HeadObjectCommand({ Bucket: this.location.bucket, Key: this.location.key }), { abortSignal: signal });
    } catch (error) {
      throw this.classify(error, signal, callerSignal);
    } finally {
      cleanup();
    }
    if (reply.ContentLength === undefined || !Number.isSafeInteger(reply.ContentLength) || reply.ContentLength < 0) {
      throw new StoreResponseError(this.url, `HEAD gave no usable Content-Length (${reply.ContentLength})`);
    }
    if (!reply.ETag) throw new StoreResponseError(this.url, 'HEAD gave no ETag');
    return { sizeBytes: reply.ContentLength, etag: reply.ETag };
  }

  async readRange(offset: number, lengthBytes: number, options: RangeReadOptions = {}): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(lengthBytes) || offset < 0 || lengthBytes <= 0) {
      throw new RangeError(`a range read of ${lengthBytes} bytes at ${offset}`);
    }
    const { signal, cleanup } = this.requestSignal(options.signal);
    try {
      const reply = await this.store.client.send(new GetObjectCommand({
        Bucket: this.location.bucket,
        Key: this.location.key,
        Range: `bytes=${offset}-${offset + lengthBytes - 1}`,
        ...(options.etag === undefined ? {} : { IfMatch: options.etag }),
      }), { abortSignal: signal });
      const body = reply.Body as Readable | undefined;
      try {
        // A store that ignores If-Match (some do) still says which object it read.
        if (options.etag !== undefined && reply.ETag !== undefined && reply.ETag !== options.etag) throw new ObjectChangedError(this.url, options.etag, reply.ETag);
        const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(reply.ContentRange ?? '');
        if (!range) throw new StoreResponseError(this.url, `a read of bytes ${offset}-${offset + lengthBytes - 1} was answered without a Content-Range (${JSON.stringify(reply.ContentRange ?? null)}): the store ignored the range`);
        if (Number(range[1]) !== offset || Number(range[2]) !== offset + lengthBytes - 1) {
          throw new StoreResponseError(this.url, `a read of bytes ${offset}-${offset + lengthBytes - 1} was answered with bytes ${range[1]}-${range[2]}`);
        }
        if (reply.ContentLength !== undefined && reply.ContentLength !== lengthBytes) {
          throw new StoreResponseError(this.url, `a read of ${lengthBytes} bytes at ${offset} was answered with Content-Length ${reply.ContentLength}`);
        }
        if (body === undefined) throw new StoreResponseError(this.url, 'a range read was answered without a body');
        return await readExactly(body, lengthBytes, signal, (problem) => new StoreResponseError(this.url, `a read of ${lengthBytes} bytes at ${offset}: ${problem}`));
      } catch (error) {
        body?.destroy();
        throw error;
      }
    } catch (error) {
      throw this.classify(error, signal, options.signal);
    } finally {
      cleanup();
    }
  }

  /** One PUT (at most 5 GiB). */
  async put(body: Uint8Array): Promise<{ etag: string }> {
    const reply = await this.send((client) => client.send(new PutObjectCommand({ Bucket: this.location.bucket, Key: this.location.key, Body: body, ContentLength: body.length, ContentType: 'application/octet-stream' })));
    return { etag: reply.ETag ?? '' };
  }

  /**
   * A multipart upload: `parts` yields each part's bytes in order (each but the
   * last at least MIN_PART_BYTES); at most `concurrency` parts are in flight.
   * On any failure the upload is aborted, so no parts are left billed.
   */
  async putMultipart(parts: AsyncIterable<Uint8Array>, options: { concurrency?: number } = {}): Promise<{ etag: string; partCount: number }> {
    const { bucket, key } = this.location;
    const created = await this.send((client) => client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ContentType: 'application/octet-stream' })));
    const uploadId = created.UploadId;
    if (!uploadId) throw new StoreResponseError(this.url, 'CreateMultipartUpload gave no UploadId');
    const done: { PartNumber: number; ETag: string }[] = [];
    const inFlight = new Set<Promise<void>>();
    let failure: unknown;
    try {
      let number = 0;
      for await (const bytes of parts) {
        if (failure) break;
        const partNumber = ++number;
        if (partNumber > MAX_PARTS) throw new StoreRequestError(this.url, undefined, `more than ${MAX_PARTS} parts`);
        const sending = this.sendPart(uploadId, partNumber, bytes).then(
          (etag) => void done.push({ PartNumber: partNumber, ETag: etag }),
          (error: unknown) => void (failure ??= error),
        );
        const tracked = sending.finally(() => inFlight.delete(tracked));
        inFlight.add(tracked);
        if (inFlight.size >= (options.concurrency ?? 4)) await Promise.race(inFlight);
      }
      await Promise.all(inFlight);
      if (failure) throw failure;
      done.sort((a, b) => a.PartNumber - b.PartNumber);
      const completed = await this.send((client) => client.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: done } })));
      return { etag: completed.ETag ?? '', partCount: done.length };
    } catch (error) {
      await Promise.allSettled(inFlight);
      await this.send((client) => client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }))).catch(() => undefined);
      throw error;
    }
  }

  close(): void {
    if (this.ownsStore) this.store.close();
  }

  private async sendPart(uploadId: string, partNumber: number, bytes: Uint8Array): Promise<string> {
    const reply = await this.send((client) => client.send(new UploadPartCommand({ Bucket: this.location.bucket, Key: this.location.key, UploadId: uploadId, PartNumber: partNumber, Body: bytes, ContentLength: bytes.length })));
    if (!reply.ETag) throw new StoreResponseError(this.url, `part ${partNumber} was answered without an ETag`);
    return reply.ETag;
  }

  /** Send a command; its errors as ours. `signal` is the caller's (an abort of it stays an AbortError). */
  private async send<Output>(run: (client: S3Client) => Promise<Output>): Promise<Output> {
    try {
      return await run(this.store.client);
    } catch (error) {
      throw this.classify(error, undefined, undefined);
    }
  }

  /** The caller's signal, with this store's request timeout added. */
  private requestSignal(caller: AbortSignal | undefined): { signal: AbortSignal; cleanup: () => void } {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(new StoreUnavailableError(this.url, `no complete reply within ${this.store.settings.requestTimeoutMs} ms`)), this.store.settings.requestTimeoutMs);
    timer.unref?.();
    const signal = caller === undefined ? timeout.signal : AbortSignal.any([caller, timeout.signal]);
    return { signal, cleanup: () => clearTimeout(timer) };
  }

  /** The SDK's error (or a network error) as one of ours; the caller's own abort stays an AbortError. */
  private classify(error: unknown, signal: AbortSignal | undefined, callerSignal: AbortSignal | undefined): unknown {
    if (callerSignal?.aborted) return new DOMException('the read was aborted', 'AbortError');
    if (error instanceof S3Error) return error;
    if (signal?.aborted && signal.reason instanceof S3Error) return signal.reason;
    const e = error as { name?: string; message?: string; code?: string; $metadata?: { httpStatusCode?: number }; Code?: string };
    const status = e.$metadata?.httpStatusCode;
    const name = e.Code ?? e.name ?? 'Error';
    const reason = `${name}${e.message && e.message !== name && e.message !== 'UnknownError' ? `: ${e.message}` : ''}`;
    if (status === 404 || name === 'NoSuchKey' || name === 'NoSuchBucket' || name === 'NotFound') return new ObjectNotFoundError(this.url, { cause: error });
    if (status === 412 || name === 'PreconditionFailed') return new ObjectChangedError(this.url, '(the one opened)', undefined);
    if (status === 401 || status === 403) return new StoreDeniedError(this.url, reason, { cause: error });
    if (status !== undefined && (status >= 500 || status === 429 || status === 408)) return new StoreUnavailableError(this.url, `HTTP ${status} ${reason}`, { cause: error });
    if (status !== undefined && status >= 400) return new StoreRequestError(this.url, status, reason, { cause: error });
    // No HTTP status: the connection (refused, reset, timed out) or a reply the SDK could not parse.
    if (name === 'CredentialsProviderError') return new StoreDeniedError(this.url, `no credentials: ${e.message}`, { cause: error });
    return new StoreUnavailableError(this.url, e.code ? `${e.code} ${reason}` : reason, { cause: error });
  }
}

/**
 * Read a body into one buffer of exactly `lengthBytes` (allocated before the
 * first byte: a lying store cannot make it grow), refusing more or fewer.
 */
async function readExactly(body: Readable, lengthBytes: number, signal: AbortSignal, problem: (text: string) => Error): Promise<Uint8Array> {
  const into = new Uint8Array(lengthBytes);
  let filled = 0;
  return new Promise<Uint8Array>((resolve, reject) => {
    let settled = false;
    const finish = (error: Error | undefined): void => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      if (error) {
        body.destroy();
        reject(error);
      } else {
        resolve(into);
      }
    };
    const onAbort = (): void => finish(signal.reason instanceof Error ? signal.reason : new DOMException('aborted', 'AbortError'));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    body.on('data', (chunk: Buffer) => {
      if (filled + chunk.length > lengthBytes) return finish(problem(`the body is longer than ${lengthBytes} bytes`));
      into.set(chunk, filled);
      filled += chunk.length;
    });
    body.on('end', () => finish(filled === lengthBytes ? undefined : problem(`the body ended after ${filled} of ${lengthBytes} bytes`)));
    body.on('error', (error) => finish(problem(`the body broke off after ${filled} of ${lengthBytes} bytes (${error.message})`)));
    body.on('close', () => finish(filled === lengthBytes ? undefined : problem(`the connection closed after ${filled} of ${lengthBytes} bytes`)));
  });
}
