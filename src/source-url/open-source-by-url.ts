// A page source named by a URL, opened the one way the CLI (`serve --from`),
// the VMM (`vm restore --from`) and lazy memory (a `remote` or `s3` spec) all
// use:
//
//   tcp://HOST:PORT    a page server (`userfault pages serve`): RemoteSource
//   s3://BUCKET/KEY    a snapshot pushed to object storage (`userfault snapshot push`): S3Source
//
// Each source's module is imported only when its scheme is asked for: opening
// a page server does not load the AWS SDK (S3Source's store client), and a
// process that opens neither loads no network code at all.
import type { RemoteSource, RemoteSourceOptions } from '../pages/remote-source.js';
import type { S3Source, S3SourceOptions } from '../s3/s3-source.js';
import { SourceUrlError } from './errors.js';

/** What a URL names: a page server, or a snapshot object in a store. */
export type SourceUrlKind = 'page-server' | 'object-store';

/** The source a URL opens; both carry the image's metadata (a VM snapshot's state). */
export type UrlPageSource = RemoteSource | S3Source;

const SCHEMES: Readonly<Record<string, SourceUrlKind>> = { 'tcp:': 'page-server', 's3:': 'object-store' };
const KIND_NAMES: Readonly<Record<SourceUrlKind, string>> = { 'page-server': 'a page server (tcp://)', 'object-store': 'an object store (s3://)' };

export interface OpenSourceOptions {
  /**
   * How long the source may not answer before its reads fail (a page
   * server's readDeadlineMs and reconnectDeadlineMs, a store's deadlineMs);
   * default each source's own (30 s). `--source-deadline-ms`.
   */
  deadlineMs?: number;
  /** s3:// only: the store, http(s)://HOST:PORT (default AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS). */
  endpoint?: string;
  /** Options of a page server's source (tcp://); deadlineMs above, when given, wins over its deadlines. */
  remote?: RemoteSourceOptions;
  /** Options of an object's source (s3://); endpoint and deadlineMs above, when given, win. */
  s3?: S3SourceOptions;
  /** The kinds this caller takes (default both): a URL of another is refused with SourceUrlError. */
  kinds?: readonly SourceUrlKind[];
}

/** The kind of source a URL names, from its scheme alone; SourceUrlError for any other scheme. */
export function sourceUrlKind(url: string): SourceUrlKind {
  const scheme = /^([a-z][a-z0-9+.-]*:)\/\//i.exec(url.trim())?.[1]?.toLowerCase();
  const kind = scheme === undefined ? undefined : SCHEMES[scheme];
  if (kind === undefined) {
    throw new SourceUrlError(url, `not a source URL: give tcp://HOST:PORT (a page server) or s3://BUCKET/KEY (a snapshot in object storage)${scheme === undefined ? '' : `, not ${scheme}//`}`);
  }
  return kind;
}

/**
 * Open the source `url` names. Rejects with SourceUrlError (an unknown
 * scheme, a kind the caller does not take, an endpoint for a page server),
 * AddressError or S3UrlError (a malformed URL of its scheme), and otherwise
 * as RemoteSource.connect or S3Source.open does.
 */
export async function openSourceByUrl(url: string, options: OpenSourceOptions = {}): Promise<UrlPageSource> {
  const kind = sourceUrlKind(url);
  if (options.kinds !== undefined && !options.kinds.includes(kind)) {
    throw new SourceUrlError(url, `it names ${KIND_NAMES[kind]}; only ${options.kinds.map((k) => KIND_NAMES[k]).join(' or ')} is taken here`);
  }
  const { deadlineMs } = options;
  switch (kind) {
    case 'page-server': {
      if (options.endpoint !== undefined) throw new SourceUrlError(url, 'an endpoint applies to s3://BUCKET/KEY, not to a page server');
      const { RemoteSource } = await import('../pages/remote-source.js');
      // The deadline bounds each read from its request (a server that stays connected but never delivers included), and a lost server's return.
      return RemoteSource.connect(url, { ...options.remote, ...(deadlineMs === undefined ? {} : { readDeadlineMs: deadlineMs, reconnectDeadlineMs: deadlineMs }) });
    }
    case 'object-store': {
      const { S3Source } = await import('../s3/s3-source.js');
      return S3Source.open(url, {
        ...options.s3,
        ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
        ...(deadlineMs === undefined ? {} : { deadlineMs }),
      });
    }
    default: {
      const never: never = kind;
      throw new SourceUrlError(url, `unknown source kind ${String(never)}`);
    }
  }
}
