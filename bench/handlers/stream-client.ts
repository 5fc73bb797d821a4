// A bulk stream from a client process of its own (for the C client's runs in
// the remote section): a RemoteSource to the page server running
// startBulkStream until SIGTERM, then one JSON line of what it read. With
// the C client serving the toucher on its own connection, what the demand
// faults then suffer is the page server's doing alone.
//
//   node dist/bench/handlers/stream-client.js URL RUN_PAGES IN_FLIGHT [MB_PER_SECOND]
import { RemoteSource } from '../../src/pages/remote-source.js';
import { startBulkStream } from './bulk-stream.js';

async function main(): Promise<void> {
  const [url, runPages, inFlight, mbPerSecond] = process.argv.slice(2);
  if (!url || !runPages || !inFlight) throw new Error('usage: stream-client URL RUN_PAGES IN_FLIGHT [MB_PER_SECOND]');
  const source = await RemoteSource.connect(url);
  const stream = startBulkStream(source, { runPages: Number(runPages), inFlight: Number(inFlight), mbPerSecond: mbPerSecond ? Number(mbPerSecond) : undefined });
  process.once('SIGTERM', () => {
    void stream.stop().then(async (stats) => {
      await source.close();
      console.log(JSON.stringify(stats));
      process.exit(0);
    });
  });
  console.log('streaming');
}

main().catch((error: Error) => {
  console.error(error.stack ?? error.message);
  process.exit(1);
});
