// A page source described as data, so it can be opened inside a pager worker
// (functions and open files do not cross a thread boundary; this does).
import type { PageSource } from '../sources/page-source.js';
import type { RemoteSourceOptions } from '../pages/remote-source.js';
import type { S3SourceOptions } from '../s3/s3-source.js';
import { BufferSource } from '../sources/buffer-source.js';
import { ZeroSource } from '../sources/zero-source.js';
import { openSourceByUrl } from '../source-url/open-source-by-url.js';
import { SourceSpecError } from './errors.js';

const SPEC_KINDS: ReadonlySet<string> = new Set(['zero', 'buffer', 'snapshot', 'raw-file', 'remote', 's3', 'module']);

/** Refuse, before any thread starts, what cannot be opened from a description (SourceSpecError). */
export function checkSourceSpec(spec: unknown): asserts spec is SourceSpec {
  const value = spec as { kind?: unknown; read?: unknown } | null;
  if (value !== null && typeof value === 'object' && typeof value.read === 'function') {
    throw new SourceSpecError(`a PageSource object (${(value as { description?: string }).description ?? value.constructor?.name ?? 'a source'}) was passed as the source`);
  }
  if (value === null || typeof value !== 'object' || typeof value.kind !== 'string' || !SPEC_KINDS.has(value.kind)) {
    throw new SourceSpecError(`${JSON.stringify(value?.kind ?? value)} is not a kind of source description`);
  }
}

export type SourceSpec =
  | { kind: 'zero'; sizeBytes: number }
  /** An in-memory image; shared with the worker, not copied. */
  | { kind: 'buffer'; buffer: SharedArrayBuffer }
  /** A snapshot in this project's format (checksummed). */
  | { kind: 'snapshot'; path: string }
  /** A raw memory file, as Firecracker writes guest memory. */
  | { kind: 'raw-file'; path: string }
  /** A page server (`userfault pages serve`), tcp://HOST:PORT; its pages come over the network as they are faulted. */
  | { kind: 'remote'; url: string; options?: RemoteSourceOptions }
  /** A snapshot pushed to object storage (`userfault snapshot push`), s3://BUCKET/KEY; its chunks are fetched as they are faulted, through the host's chunk cache. */
  | { kind: 's3'; url: string; options?: S3SourceOptions }
  /** A module whose export (default: `createSource`) is `(options) => PageSource | Promise<PageSource>`. */
  | { kind: 'module'; url: string; exportName?: string; options?: unknown };

export async function openSource(spec: SourceSpec): Promise<PageSource> {
  checkSourceSpec(spec);
  switch (spec.kind) {
    case 'zero':
      return new ZeroSource(spec.sizeBytes);
    case 'buffer':
      return new BufferSource(spec.buffer);
    case 'snapshot': {
      const { SnapshotSource } = await import('../sources/snapshot-source.js');
      return SnapshotSource.open(spec.path);
    }
    case 'raw-file': {
      const { RawFileSource } = await import('../sources/raw-file-source.js');
      return RawFileSource.open(spec.path);
    }
    case 'remote':
      return openSourceByUrl(spec.url, { kinds: ['page-server'], remote: spec.options });
    case 's3':
      return openSourceByUrl(spec.url, { kinds: ['object-store'], s3: spec.options });
    case 'module': {
      const module = (await import(spec.url)) as Record<string, unknown>;
      const factory = module[spec.exportName ?? 'createSource'];
      if (typeof factory !== 'function') throw new TypeError(`${spec.url} does not export a function ${spec.exportName ?? 'createSource'}`);
      return (await factory(spec.options)) as PageSource;
    }
    default: {
      const never: never = spec;
      throw new TypeError(`unknown source kind in ${JSON.stringify(never)}`);
    }
  }
}

/** What names the image a spec describes (its path or URL), for a page cache kept per image; undefined for an image with no name (in memory, all zero). */
export function imageName(spec: SourceSpec): string | undefined {
  switch (spec.kind) {
    case 'snapshot':
    case 'raw-file':
      return `${spec.kind}:${spec.path}`;
    case 'remote':
    case 's3':
    case 'module':
      return `${spec.kind}:${spec.url}`;
    default:
      return undefined;
  }
}

/** The size of the image a spec describes (opening the source when the spec does not say). */
export async function imageSizeBytes(spec: SourceSpec): Promise<number> {
  if (spec.kind === 'zero') return spec.sizeBytes;
  if (spec.kind === 'buffer') return spec.buffer.byteLength;
  const source = await openSource(spec);
  try {
    return source.sizeBytes;
  } finally {
    await source.close?.();
  }
}
