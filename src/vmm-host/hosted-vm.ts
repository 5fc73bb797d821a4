// One VM as this host runs it: the Vmm (src/vm/), and the live migration
// the host drives for it (out) or received it by (in), from src/migrate/.
// The VM knows nothing of migration beyond the views it offers
// (src/vm/migratable.ts): for an outgoing migration the host takes the VM
// (Vmm.beginMigration: it is migrating from then on), runs a SourceMigration
// over it, follows it for the operator (its outcome, --resume, --abandon,
// cancel, and vm stop while it is paused by a cut), and tells the VM how it
// ended (Vmm.endMigration). The VM's status is the VM's; its migration part
// is added here (HostedVmStatus).
import type { DestinationProgress } from '../migrate/destination-migration.js';
import type { AvailabilityStats } from '../sources/network/availability.js';
import { isPaused, sourceOwnsGuest } from '../migrate/migration-state.js';
import { MigrationStoppedError } from '../migrate/errors.js';
import { SourceMigration, type MigrateOptions, type MigrationProgress } from '../migrate/source-migration.js';
import { InvalidStateTransitionError } from '../vm/errors.js';
import type { MigrationSourceMachine } from '../vm/migratable.js';
import type { VmLifecycleEvent } from '../vm/vm-lifecycle.js';
import type { Vmm, VmStatus } from '../vm/vmm.js';

/** The VM's status, with the live migration of it, out (source) or in (destination), while it runs and once it ended. */
export interface HostedVmStatus extends VmStatus {
  migration?: MigrationProgress | DestinationProgress;
  /** The network source its memory comes from (restore --from, an incoming post-copy): its peer's outages, the current one while it lasts. */
  source?: AvailabilityStats;
}

export interface HostedVmOptions {
  /** The incoming migration this VM came by (`vm receive`): its progress, for the status. */
  incoming?: { progress(): DestinationProgress };
  /** The network source its memory comes from, if any: its outages now (undefined for a local one). */
  source?: () => AvailabilityStats | undefined;
}

export class HostedVm {
  /** The outgoing migration (the last one started), and its run: its final report, or its failure. */
  private outgoing: SourceMigration | undefined;
  private outgoingRun: Promise<MigrationProgress> | undefined;
  /** Callers waiting for the outgoing migration to give up reconnecting (migrationOutcome, resumeMigration). */
  private operatorWaiters: Array<(progress: MigrationProgress) => void> = [];

  constructor(readonly vmm: Vmm, private readonly options: HostedVmOptions = {}) {}

  status(): HostedVmStatus {
    const migration = this.migrationProgress();
    const source = this.sourceAvailability();
    return { ...this.vmm.status(), ...(migration ? { migration } : {}), ...(source ? { source } : {}) };
  }

  /** The outages of the network source its memory comes from; undefined for a local source, or none. */
  sourceAvailability(): AvailabilityStats | undefined {
    return this.options.source?.();
  }

  /** The live migration's progress: the outgoing one once one started, else the one this VM came by; undefined if none. */
  migrationProgress(): MigrationProgress | DestinationProgress | undefined {
    return this.outgoing ? this.outgoing.progress() : this.options.incoming?.progress();
  }

  /**
   * Live-migrate this VM to a destination VMM (`vm receive`): pre-copy while
   * it runs, then post-copy or stop-and-copy (source-migration.ts). The VM is
   * `migrating` meanwhile and refuses every other request but input. On
   * success the guest runs there and this VM stops (its exit reason
   * 'migrated'); a failure or cancel before switchover leaves it as it was.
   */
  migrate(options: MigrateOptions): Promise<MigrationProgress> {
    return this.vmm.beginMigration().then((machine) => this.drive(machine, options));
  }

  private async drive(machine: MigrationSourceMachine, options: MigrateOptions): Promise<MigrationProgress> {
    let migration: SourceMigration | undefined;
    let report: MigrationProgress;
    try {
      migration = new SourceMigration(machine, options);
      this.outgoing = migration;
      const m = migration;
      m.on('waiting', () => {
        for (const waiter of this.operatorWaiters.splice(0)) waiter(m.progress());
      });
      this.outgoingRun = migration.run();
      this.outgoingRun.catch(() => {});
      report = await this.outgoingRun;
    } catch (error) {
      // Past GO the guest is (or may be) the destination's: this side stays migrating, keeping its memory.
      if (migration && !sourceOwnsGuest(migration.state)) this.vmm.endMigration({ type: 'left' });
      // Stopped by the operator while paused: the guest was left to the destination; the VM ends (stop()).
      else this.vmm.endMigration(error instanceof MigrationStoppedError ? { type: 'stopped' } : { type: 'kept' });
      throw error;
    }
    this.vmm.endMigration({ type: 'moved', to: options.to });
    return report;
  }

  /** `vm migrate --resume`: reconnect a paused migration now; resolves with its final report, or its progress if it gives up again. */
  resumeMigration(): Promise<MigrationProgress> {
    if (!this.outgoing || !this.outgoingRun) throw new InvalidStateTransitionError(this.vmm.state, 'resume the migration of');
    this.outgoing.requestResume();
    // The answer waits for the next outcome: its end, or its giving up again.
    return Promise.race([this.outgoingRun, new Promise<MigrationProgress>((resolve) => this.operatorWaiters.push(resolve))]);
  }

  /**
   * `vm migrate --abandon`: a migration that lost its connection with GO in
   * flight (committing-paused) takes the guest back; it runs here again.
   */
  async abandonMigration(): Promise<void> {
    if (!this.outgoing) throw new InvalidStateTransitionError(this.vmm.state, 'abandon the migration of');
    await this.outgoing.requestAbandon();
    await this.outgoingRun?.catch(() => {});
  }

  /**
   * The outgoing migration's end: its final report, or (it failed) its
   * error — or its progress as soon as it gave up reconnecting and waits
   * for the operator (--resume, --abandon, or vm stop), so that a caller
   * waiting on it is told the truth rather than left hanging.
   */
  migrationOutcome(run: Promise<MigrationProgress> | undefined = this.outgoingRun): Promise<MigrationProgress> {
    if (!run) return Promise.reject(new InvalidStateTransitionError(this.vmm.state, 'follow the migration of'));
    return Promise.race([run, this.migrationWaitsForOperator()]);
  }

  /** Resolves with the outgoing migration's progress once it waits for the operator (now, or the next time). */
  private migrationWaitsForOperator(): Promise<MigrationProgress> {
    const migration = this.outgoing;
    if (migration?.waitingForOperator) return Promise.resolve(migration.progress());
    return new Promise((resolve) => this.operatorWaiters.push(resolve));
  }

  /** Cancel the outgoing migration (before switchover only; MigrationError after). */
  cancelMigration(): void {
    if (!this.outgoing) throw new InvalidStateTransitionError(this.vmm.state, 'cancel the migration of');
    this.outgoing.cancel();
  }

  /** Throws InvalidStateTransitionError (naming the state) unless the VM's lifecycle allows `event` now. */
  check(event: VmLifecycleEvent): void {
    // A migrating VM stops only when its migration, paused by a cut, allows it (vm stop is its way out).
    if (event === 'stop' && this.vmm.state === 'migrating' && this.outgoing && isPaused(this.outgoing.state)) return;
    this.vmm.check(event);
  }

  /**
   * Stop: refused (InvalidStateTransitionError) while an operation owns the
   * VM or once it is stopped; otherwise the VM is closed.
   */
  stop(): Promise<void> {
    this.check('stop');
    return this.close();
  }

  /**
   * End the VM, whatever it is doing (an allowed vm stop, SIGTERM, Ctrl-C).
   * An outgoing migration paused by a cut is stopped first: it holds the
   * VM's request queue, which Vmm.close waits for, and would hold it until
   * an operator's --resume or --abandon. Otherwise Vmm.close().
   */
  close(): Promise<void> {
    if (this.vmm.state === 'migrating' && this.outgoing && isPaused(this.outgoing.state)) return this.stopMigrating();
    return this.vmm.close();
  }

  /**
   * Stop while an outgoing migration is paused by a cut: the operator gives up
   * on it (the destination has the guest, or it is lost with it). The
   * migration ends first — it holds the VM's request queue, which close()
   * waits for.
   */
  private async stopMigrating(): Promise<void> {
    this.outgoing!.stop();
    await this.outgoingRun?.catch(() => {});
    await this.vmm.close();
  }
}
