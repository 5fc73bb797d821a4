// A destination is never held for ever by a source that keeps its
// connections alive but stops migrating: before GO, a source that sends
// nothing but pings is given up on at the progress deadline, and what was
// built is discarded.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DestinationMigration } from '../../src/migrate/destination-migration.js';
import { connectChannel, newSessionId } from '../../src/migrate/transport/channels.js';
import { PAGE_SIZE } from '../../src/native.js';
import { crc32c } from '../../src/checksum/crc32c.js';
import { softMachineKind } from './soft-machine.js';
import { IncomingMigrationStalledError } from '../../src/migrate/errors.js';

describe('a destination and a source that stops but answers pings', { timeout: 20_000 }, () => {
  test('stopped mid-pre-copy: given up at the progress deadline, the machine discarded', async () => {
    const kind = softMachineKind();
    const destination = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind, stallTimeoutMs: 400, progressTimeoutMs: 800 });
    const address = { host: '127.0.0.1', port: Number(new URL(destination.url).port) };
    const session = newSessionId();
    const main = await connectChannel(address, 'main', session, 2000);
    const urgent = await connectChannel(address, 'urgent', session, 2000);
    const closedByDestination = new Promise<void>((resolve) => main.once('end', () => resolve()));
    // Alive: this side answers every ping (the connection layer does) and pings too.
    main.watchLiveness(400);
    urgent.watchLiveness(400);
    main.pageSizeBytes = PAGE_SIZE;
    const machine = { kind: 'soft-writer', memoryBytes: 1 << 20, pattern: 'random', writePages: 16, pagesPerTick: 1, tickMs: 10 };
    // A request of the source's: its ACCEPT is matched by id.
    const accepted = await main.call({ type: 'mig-begin', mode: 'precopy', pageSizeBytes: PAGE_SIZE, memoryBytes: 1 << 20, machineJson: JSON.stringify(machine) }, { expect: ['mig-accept'] });
    assert.equal(accepted.type, 'mig-accept');
    await main.send({ type: 'mig-pages', firstPage: 0, pageCount: 1, round: 0, checksums: Uint32Array.of(crc32c(new Uint8Array(PAGE_SIZE))), data: new Uint8Array(PAGE_SIZE) });
    const started = performance.now();
    await assert.rejects(destination.running, (error: unknown) => error instanceof IncomingMigrationStalledError && /nothing but pings/.test(error.message));
    const tookMs = performance.now() - started;
    assert.ok(tookMs >= 700 && tookMs < 3000, `given up after ${Math.round(tookMs)} ms`);
    assert.equal(destination.state, 'failed');
    // Its FIN reaches this side a moment after the failure is known.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closedByDestination, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('the destination did not close its connections within 2 s')), 2000)))]);
    clearTimeout(timer);
    assert.equal(kind.built[0]!.running, false, 'nothing runs there');
    main.destroy();
    urgent.destroy();
    destination.close();
    await kind.built[0]!.close();
  });
});
