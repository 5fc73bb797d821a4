// Restore from a page server behind a hostile proxy (test/pages/tamper-proxy.ts),
// what an outside probe did: pages altered on the way with the frame CRC
// fixed must never reach guest memory, and a server that stays connected but
// never delivers must not hold a restore for longer than --source-deadline-ms.
// Needs /dev/kvm and the micro guest.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TamperProxy, type TamperMode } from '../pages/tamper-proxy.js';
import { kvmSkipReason, snapshotRunningWriter, spawnCli, spawnVmm, type CleanupScope, type SpawnedVmm } from './helpers.js';

const skip = kvmSkipReason();

/** `userfault pages serve` on 127.0.0.1, and its port once it says it listens. */
async function pageServer(t: CleanupScope, snap: string): Promise<{ run: SpawnedVmm; port: number }> {
  const run = spawnCli(t, ['pages', 'serve', '--snapshot', snap, '--listen', '127.0.0.1:0', '--json']);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const line = run.console.text.split('\n').find((l) => l.includes('"listening"'));
    if (line) return { run, port: (JSON.parse(line) as { port: number }).port };
    if (Date.now() > deadline || run.child.exitCode !== null) throw new Error(`the page server did not listen:\n${run.console.text}\n${run.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('restore from a page server behind a hostile proxy', { skip, timeout: 120_000 }, () => {
  let dir = '';
  let snap = '';

  before(async () => {
    if (skip) return;
    dir = mkdtempSync(join(tmpdir(), 'uf-vm-hostile-'));
    snap = join(dir, 'vm.snap');
    await snapshotRunningWriter(snap, 'workload=writer mem=16 hb=10 pattern=random seed=5');
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function throughProxy(t: CleanupScope, mode: TamperMode): Promise<TamperProxy> {
    const server = await pageServer(t, snap);
    const proxy = await TamperProxy.start({ host: '127.0.0.1', port: server.port }, mode);
    t.after(() => proxy.close());
    return proxy;
  }

  for (const lazy of [false, true]) {
    test(`${lazy ? 'lazily' : 'eagerly'}: pages altered on the way (byte 8 flipped, frame CRC fixed) are refused naming the page; the guest never runs on them`, async (t) => {
      const proxy = await throughProxy(t, 'flip-pages');
      const restored = spawnVmm(t, ['restore', '--from', proxy.url, ...(lazy ? ['--lazy'] : [])]);
      const code = await restored.exit;
      assert.notEqual(code, 0, restored.stderr());
      assert.match(restored.stderr(), /the page at offset 0x[0-9a-f]+ from page server tcp:\/\/127\.0\.0\.1:\d+ does not match its image's checksum: CRC32C/);
      assert.doesNotMatch(restored.console.text, /verify pages=|done status=/, 'the guest never finished on altered memory');
      assert.ok(proxy.pagesFlipped > 0);
    });

    test(`${lazy ? 'lazily' : 'eagerly'}: a server that answers PINGs but never a READ fails the restore at --source-deadline-ms, naming the page`, async (t) => {
      const proxy = await throughProxy(t, 'swallow-reads');
      const started = performance.now();
      const restored = spawnVmm(t, ['restore', '--from', proxy.url, '--source-deadline-ms', '2000', ...(lazy ? ['--lazy'] : [])]);
      const code = await restored.exit;
      const waitedMs = performance.now() - started;
      assert.notEqual(code, 0, restored.stderr());
      assert.match(restored.stderr(), /the page at offset 0x[0-9a-f]+ did not arrive within the 2000 ms deadline/);
      assert.ok(waitedMs < 30_000, `the restore ended after ${Math.round(waitedMs)} ms`);
      assert.ok(proxy.reads > 0);
    });
  }
});
