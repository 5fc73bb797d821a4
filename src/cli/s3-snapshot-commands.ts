// `userfault snapshot push FILE s3://BUCKET/KEY` and `userfault snapshot pull
// s3://BUCKET/KEY FILE`: a snapshot file to and from object storage, in the
// layout lazy restores read by range (docs/s3.md). The store is found the way
// S3 tools find it: --endpoint or AWS_ENDPOINT_URL(_S3), credentials from the
// AWS_* variables or the profile, AWS_REGION. The S3 client (a quarter of a
// second to load) is imported by the commands that use it, not by every command.
import { Option, type Command } from 'commander';
import { parseS3Url } from '../s3/s3-url.js';
import { checkSnapshotPath } from '../vm/persist/vm-snapshot.js';
import { formatBytes } from '../format-bytes.js';
import { roundMs } from './output.js';
import { ByteProgress, ProgressView, progressMode, type ProgressMode } from './progress.js';
import { endpointArg, sizeArg } from './parse.js';
import { checkInputFile } from './snapshot-commands.js';

interface StoreCliOptions {
  endpoint?: string;
  json?: boolean;
}

/** Progress on stderr: a line (redrawn on a terminal), or under --json a JSON line per tenth. */
function transferProgressMode(json: boolean | undefined): ProgressMode {
  return json ? 'json' : progressMode(false);
}

export function endpointOption(): Option {
  return new Option('--endpoint <url>', 'the S3-compatible store, http(s)://HOST:PORT (default AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS); path-style addressing').argParser(endpointArg);
}

export function registerSnapshotTransferCommands(snapshot: Command): void {
  snapshot
    .command('push <file> <url>')
    .description('upload a snapshot to object storage (s3://BUCKET/KEY) in a layout made for range reads: its tables first, pages in chunks, each chunk checksummed, zero pages not stored')
    .addOption(endpointOption())
    .addOption(new Option('--chunk <bytes>', 'image bytes per chunk, the unit of fetching and caching (K/M suffixes; whole pages, at most 64M)').argParser(sizeArg({ min: 4096, max: 64 << 20, multipleOf: 4096, multipleName: 'the 4096-byte page' })).default(256 * 1024, '256K'))
    .option('--json', 'print the result as one JSON object')
    .action(async (file: string, url: string, options: StoreCliOptions & { chunk: number }) => {
      const location = parseS3Url(url);
      checkInputFile(file);
      const { pushSnapshot } = await import('../s3/snapshot-push.js');
      const view = new ProgressView(transferProgressMode(options.json));
      // A line per phase: every page checked (the file is read whole), then the upload, each with its own rate.
      let phase: { name: string; bar: ByteProgress } | undefined;
      const summary = await pushSnapshot(file, location, {
        endpoint: options.endpoint,
        chunkBytes: options.chunk,
        onProgress: (p) => {
          if (phase?.name !== p.phase) {
            view.end();
            phase = { name: p.phase, bar: new ByteProgress(view, p.phase === 'checking' ? `checking every page of ${file}` : `uploading to ${url}`) };
          }
          phase.bar.update(p.doneBytes, p.totalBytes);
        },
      }).finally(() => view.end());
      if (options.json) console.log(JSON.stringify({ ...summary, durationMs: roundMs(summary.durationMs) }));
      else {
        console.log(
          `pushed ${file} to ${summary.url}: ${formatBytes(summary.objectSizeBytes)} (${summary.chunkCount} chunks of ${formatBytes(summary.chunkBytes)}, ` +
            `${summary.dataPageCount} data pages, ${summary.zeroPageCount} zero pages not stored, index ${formatBytes(summary.indexBytes)}) ` +
            `in ${roundMs(summary.durationMs)} ms${summary.partCount ? ` as ${summary.partCount} parts` : ''}; ETag ${summary.etag}`,
        );
      }
    });
  snapshot
    .command('pull <url> <file>')
    .description('fetch a snapshot pushed to object storage back whole, as the file it was pushed from (every chunk\'s SHA-256 and page CRC checked)')
    .addOption(endpointOption())
    .option('--json', 'print the result as one JSON object')
    .action(async (url: string, file: string, options: StoreCliOptions) => {
      const location = parseS3Url(url);
      checkSnapshotPath(file);
      const { pullSnapshot } = await import('../s3/snapshot-pull.js');
      const view = new ProgressView(transferProgressMode(options.json));
      const bar = new ByteProgress(view, `downloading ${url}`);
      const summary = await pullSnapshot(location, file, { endpoint: options.endpoint, onProgress: (p) => bar.update(p.doneBytes, p.totalBytes) }).finally(() => view.end());
      if (options.json) console.log(JSON.stringify({ ...summary, durationMs: roundMs(summary.durationMs) }));
      else {
        console.log(
          `pulled ${summary.url} to ${file}: ${formatBytes(summary.fileSizeBytes)} (${summary.chunkCount} chunks, ${summary.dataPageCount} data pages, every page checked) ` +
            `in ${summary.requests} requests, ${formatBytes(summary.bytesFetched)}, ${roundMs(summary.durationMs)} ms`,
        );
      }
    });
}
