// The host driving a VM's outgoing migration, without KVM: the VM is a
// stand-in whose guest is a soft machine (test/migrate/soft-machine.ts: real
// guest RAM, a worker for a vCPU), migrated over real sockets to a real
// destination. What is checked is the host's part: the VM is told how the
// migration ended (Vmm.endMigration), the status carries the migration, and
// a migration the VM refuses to begin is refused with the VM's own error.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DestinationMigration, type DestinationProgress } from '../../src/migrate/destination-migration.js';
import { MigrationError, MigrationStoppedError } from '../../src/migrate/errors.js';
import { InvalidStateTransitionError } from '../../src/vm/errors.js';
import type { MigrationEnd, MigrationSourceMachine } from '../../src/vm/migratable.js';
import { VmLifecycle } from '../../src/vm/vm-lifecycle.js';
import type { Vmm, VmStatus } from '../../src/vm/vmm.js';
import { HostedVm } from '../../src/vmm-host/hosted-vm.js';
import { CutProxy } from '../migrate/cut-proxy.js';
import { SoftMachine, softMachineKind } from '../migrate/soft-machine.js';

/**
 * A VM that offers `machine` to a migration: its lifecycle the real table's,
 * each end it is told recorded. Running until a migration begins.
 */
function standInVm(machine: MigrationSourceMachine): { vmm: Vmm; ends: MigrationEnd[] } {
  const lifecycle = new VmLifecycle('running');
  const ends: MigrationEnd[] = [];
  // As Vmm.close: a migration holds the VM's request queue, which close waits for, until the VM is told it ended.
  let migrationEnded = Promise.resolve();
  let endMigrationTurn = (): void => {};
  const vmm = {
    get state() {
      return lifecycle.state;
    },
    check: (event: Parameters<VmLifecycle['check']>[0]) => lifecycle.check(event),
    beginMigration: async () => {
      lifecycle.transition('migrate');
      migrationEnded = new Promise((resolve) => (endMigrationTurn = resolve));
      return machine;
    },
    endMigration: (end: MigrationEnd) => {
      ends.push(end);
      if (end.type === 'moved') lifecycle.transition('migrate-done');
      else if (end.type !== 'left') lifecycle.transition('migrate-failed');
      endMigrationTurn();
    },
    status: (): VmStatus => ({ state: lifecycle.state, memoryBytes: machine.memory.lengthBytes, vcpus: [], exitReason: undefined }),
    close: async () => {
      await migrationEnded;
      if (lifecycle.allows('stop')) lifecycle.transition('stop');
    },
  };
  return { vmm: vmm as unknown as Vmm, ends };
}

function softGuest(): SoftMachine {
  return SoftMachine.start({ memoryBytes: 4 << 20, pattern: 'random', writePages: 256, pagesPerTick: 8, tickMs: 5 }, 11);
}

describe('a hosted VM', () => {
  test('a completed migration tells the VM it moved, to the destination, and the status carries the final report', { timeout: 30_000 }, async () => {
    const guest = softGuest();
    const kind = softMachineKind();
    const destination = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind });
    try {
      const { vmm, ends } = standInVm(guest);
      const host = new HostedVm(vmm);
      assert.equal(host.status().migration, undefined);
      const report = await host.migrate({ to: destination.url, mode: 'precopy' });
      assert.equal(report.state, 'completed');
      assert.deepEqual(ends, [{ type: 'moved', to: destination.url }]);
      assert.equal(vmm.state, 'stopped');
      const status = host.status();
      assert.equal(status.migration?.role, 'source');
      assert.equal(status.migration?.state, 'completed');
      await destination.done;
    } finally {
      destination.close();
      await Promise.all(kind.built.map((m) => m.close()));
      await guest.close();
    }
  });

  test('a migration the destination refuses before the switchover gives the guest back: the VM keeps it', { timeout: 30_000 }, async () => {
    const guest = softGuest();
    const kind = softMachineKind();
    const refusing = { ...kind, parseMachine: (): never => { throw new Error('this host takes no machines') } };
    const destination = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind: refusing });
    try {
      const { vmm, ends } = standInVm(guest);
      const host = new HostedVm(vmm);
      await assert.rejects(host.migrate({ to: destination.url, mode: 'precopy' }), MigrationError);
      assert.deepEqual(ends, [{ type: 'kept' }]);
      assert.equal(vmm.state, 'paused');
      assert.equal(host.status().migration?.role, 'source');
    } finally {
      destination.close();
      await guest.close();
    }
  });

  test('a migration the VM refuses to begin is refused with its error, and there is none to follow', async () => {
    const guest = softGuest();
    try {
      const { vmm, ends } = standInVm(guest);
      (vmm as unknown as { beginMigration: () => Promise<never> }).beginMigration = () => Promise.reject(new InvalidStateTransitionError('snapshotting', 'migrate'));
      const host = new HostedVm(vmm);
      await assert.rejects(host.migrate({ to: '127.0.0.1:1', mode: 'precopy' }), (e: unknown) => e instanceof InvalidStateTransitionError && e.from === 'snapshotting');
      assert.deepEqual(ends, []);
      assert.throws(() => host.resumeMigration(), InvalidStateTransitionError);
      assert.throws(() => host.cancelMigration(), InvalidStateTransitionError);
      await assert.rejects(host.migrationOutcome(), InvalidStateTransitionError);
      // Not migrating: stop is the VM's own lifecycle's to allow.
      assert.doesNotThrow(() => host.check('stop'));
    } finally {
      await guest.close();
    }
  });

  test('closing while the migration, cut past the switchover, waits for the operator stops the migration first, then the VM', { timeout: 30_000 }, async () => {
    const guest = SoftMachine.start({ memoryBytes: 16 << 20, pattern: 'random', writePages: 256, pagesPerTick: 8, tickMs: 5 }, 13);
    const kind = softMachineKind();
    const destination = await DestinationMigration.listen({ host: '127.0.0.1', port: 0, kind, reconnectDeadlineMs: 10_000 });
    const { hostname: destinationHost, port } = new URL(destination.url);
    // Post-copy slowed to 1 MB/s: 16 MiB of guest RAM is far from sent when the link is cut.
    const proxy = await CutProxy.start({ host: destinationHost, port: Number(port) }, { bytesPerSecond: 1e6 });
    try {
      const { vmm, ends } = standInVm(guest);
      const host = new HostedVm(vmm);
      const run = host.migrate({ to: proxy.address, mode: 'postcopy', reconnectDeadlineMs: 300 });
      run.catch(() => {});
      // Past GO, the source told the guest runs there: post-copy.
      while (host.migrationProgress()?.state !== 'postcopy') await new Promise((resolve) => setTimeout(resolve, 10));
      // Cut, and nothing answers a reconnect: the source gives up reconnecting and waits for the operator.
      proxy.close();
      const progress = await host.migrationOutcome();
      assert.equal(progress.waitingForOperator, true);
      assert.equal(progress.state, 'postcopy-paused');
      assert.equal(vmm.state, 'migrating');
      // The VM's lifecycle alone refuses a stop while migrating; the host allows it while the migration is paused.
      assert.throws(() => vmm.check('stop'), InvalidStateTransitionError);
      assert.doesNotThrow(() => host.check('stop'));
      await host.close();
      await assert.rejects(run, MigrationStoppedError);
      assert.deepEqual(ends, [{ type: 'stopped' }]);
      assert.equal(vmm.state, 'stopped');
    } finally {
      proxy.close();
      destination.close();
      await Promise.all(kind.built.map((m) => m.close()));
      await guest.close();
    }
  });

  test('a received VM\'s status carries the migration it came by', () => {
    const progress = { role: 'destination', state: 'completed' } as unknown as DestinationProgress;
    const { vmm } = standInVm({ memory: { lengthBytes: 4096 } } as unknown as MigrationSourceMachine);
    const host = new HostedVm(vmm, { incoming: { progress: () => progress } });
    assert.equal(host.status().migration, progress);
    assert.equal(host.migrationProgress(), progress);
  });
});
