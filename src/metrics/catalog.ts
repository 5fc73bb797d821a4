// Every metric userfault exports, in one table: its Prometheus name, type,
// labels (each with its closed set of values, so cardinality stays bounded)
// and meaning. The registry (metrics-registry.ts) builds the exported metrics
// from it, the reporters fill them, and docs/metrics.md is generated from it
// (test/metrics/catalog.test.ts keeps the two equal).
//
// Names follow Prometheus's conventions: the userfault_ prefix, base units
// (seconds, bytes), _total on counters, _bytes/_seconds on the unit. Labels
// never carry an unbounded value: no addresses, no client ids, no paths. The
// one label that grows with the machine is `vcpu` (at most 255 of them).
import { PAGE_STATE_NAMES } from '../pager/page-state.js';
import { FAULT_KINDS } from '../pager/metrics.js';
import { VCPU_EXIT_REASONS } from '../vm/vcpu-protocol.js';
import type { VmLifecycleState } from '../vm/vm-lifecycle.js';
import type { VcpuRunState } from '../vm/vcpu-state-machine.js';
import type { MigrationState } from '../migrate/migration-state.js';

export type MetricType = 'counter' | 'gauge' | 'histogram';

/** Which processes export a metric (a registry is built for the components its process runs). */
export type MetricComponent = 'pager' | 'vm' | 'migration' | 'handler' | 'page-server' | 'source';

export interface MetricDefinition {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  /** Label name -> its values (a closed set), or a description of them where they are numbers (vcpu). */
  readonly labels: Readonly<Record<string, readonly string[] | string>>;
  readonly component: MetricComponent;
}

/** `true` when the list names exactly the members of the union (a compile error otherwise): label value sets cannot drift from the types. */
export type Exactly<List extends readonly string[], Union extends string> = [Exclude<Union, List[number]>, Exclude<List[number], Union>] extends [never, never] ? true : false;
const exactly = <Union extends string>() => <const List extends readonly string[]>(list: List & (Exactly<List, Union> extends true ? unknown : never)): List => list;

const ROLE = ['source', 'destination'] as const;
const MIGRATION_STATES = exactly<MigrationState>()(['idle', 'connecting', 'precopy', 'switchover', 'committing', 'committing-paused', 'postcopy', 'postcopy-paused', 'completing', 'completed', 'cancelled', 'failed', 'listening', 'receiving', 'loading', 'ready', 'ready-paused', 'verifying']);
const VM_STATES = exactly<VmLifecycleState>()(['created', 'running', 'paused', 'snapshotting', 'restoring', 'migrating', 'stopped']);
const VCPU_STATES = exactly<VcpuRunState>()(['paused', 'running', 'exited']);
/**
 * Clients counted as connected: every state but closed. The handler's two
 * label sets are held to its types by handler-reporter.ts, not here: the VM's
 * control API builds a registry from this table and must not reach the
 * handler (src/handler/) through it.
 */
export const HANDLER_CLIENT_STATES = ['handshaking', 'starting', 'serving', 'closing'] as const;
export const HANDLER_CLIENT_END_REASONS = ['hangup', 'exited', 'refused', 'failed', 'server-closed'] as const;

function define<const T extends Record<string, Omit<MetricDefinition, 'labels'> & { labels?: MetricDefinition['labels'] }>>(table: T): { readonly [K in keyof T]: MetricDefinition } {
  return Object.fromEntries(Object.entries(table).map(([id, definition]) => [id, { labels: {}, ...definition }])) as { readonly [K in keyof T]: MetricDefinition };
}

export const METRICS = define({
  // ---- the pager: a lazy restore's or a post-copy destination's guest RAM (VMM), each client of `serve` (summed)
  faults: {
    name: 'userfault_faults_total', type: 'counter', component: 'pager', labels: { kind: FAULT_KINDS },
    help: 'Page faults read from the userfaultfd, by what the fault found: a missing page (a read starts), one already in flight (coalesced), a present one (a wake), a discarded one (the zero page), a poisoned one, an address outside every region, a MINOR or a write-protect fault.',
  },
  pagesInstalled: {
    name: 'userfault_pages_installed_total', type: 'counter', component: 'pager', labels: { how: ['copy', 'push', 'zero', 'wake', 'cache'] },
    help: 'Pages the pager resolved, by how: copy (UFFDIO_COPY of a read), push (UFFDIO_COPY of a page the source sent unasked, post-copy), zero (UFFDIO_ZEROPAGE), wake (the page was there already: its waiters were woken), cache (UFFDIO_CONTINUE of a page in the shared page cache: no copy).',
  },
  pageCacheFills: {
    name: 'userfault_page_cache_fills_total', type: 'counter', component: 'pager',
    help: 'Pages this pager read, checked and wrote into a shared page cache (zero-copy restore); every restore of the image maps them from there.',
  },
  copiedBytes: { name: 'userfault_copied_bytes_total', type: 'counter', component: 'pager', help: 'Bytes copied into registered memory by UFFDIO_COPY.' },
  prefetchedPages: { name: 'userfault_prefetched_pages_total', type: 'counter', component: 'pager', help: 'Pages copied before any fault asked for them (read-ahead, working-set replay, prefetch-all).' },
  prefetchHits: { name: 'userfault_prefetch_hits_total', type: 'counter', component: 'pager', help: 'Faults on a page that was already in flight because of read-ahead or replay.' },
  copyIoctls: { name: 'userfault_copy_ioctls_total', type: 'counter', component: 'pager', help: 'UFFDIO_COPY ioctls issued (a contiguous run of pages is one).' },
  copyRetries: { name: 'userfault_copy_retries_total', type: 'counter', component: 'pager', help: 'Copies the kernel refused for now (EAGAIN while events are pending, or an errno retried) and that were retried.' },
  sourceReads: { name: 'userfault_source_reads_total', type: 'counter', component: 'pager', help: 'Reads from the page source (a file, a page server, a migration stream).' },
  sourceReadErrors: { name: 'userfault_source_read_errors_total', type: 'counter', component: 'pager', help: 'Source reads that failed (transient ones are retried; the rest poison their pages).' },
  sourceReadsAborted: { name: 'userfault_source_reads_aborted_total', type: 'counter', component: 'pager', help: 'Source reads aborted because none of their pages was needed any more (discarded, unmapped or pushed meanwhile).' },
  pagesPoisoned: { name: 'userfault_pages_poisoned_total', type: 'counter', component: 'pager', help: 'Pages given up and poisoned (UFFDIO_POISON: an access gets SIGBUS or EFAULT): the source failed for good, or the kernel refused the copy.' },
  pushedPagesDropped: { name: 'userfault_pushed_pages_dropped_total', type: 'counter', component: 'pager', help: 'Pages the source pushed that were dropped: already present or discarded.' },
  uffdEvents: {
    name: 'userfault_uffd_events_total', type: 'counter', component: 'pager', labels: { event: ['remove', 'unmap', 'remap', 'fork', 'unknown'] },
    help: 'Non-cooperative userfaultfd events read (MADV_DONTNEED/REMOVE, munmap, mremap, fork), applied before the faults of their batch.',
  },
  pages: {
    name: 'userfault_pages', type: 'gauge', component: 'pager', labels: { state: PAGE_STATE_NAMES },
    help: 'Pages of the image by state now: missing, in flight (a read or copy under way), present, discarded (thrown away by the application: reads zero), unmapped, poisoned.',
  },
  pagesPending: { name: 'userfault_pages_pending', type: 'gauge', component: 'pager', help: 'Pages a complete restore still has to fill (stored, not known to be zero, missing or in flight); 0 when complete.' },
  sourceReadsInFlight: { name: 'userfault_source_reads_in_flight', type: 'gauge', component: 'pager', help: 'Source reads started and not finished.' },
  faultLatency: {
    name: 'userfault_fault_latency_seconds', type: 'histogram', component: 'pager',
    help: 'Time a faulting thread waited: from its fault message read to its page resolved (copy, zero page, wake or poison). Buckets double from 1 µs.',
  },
  sourceReadLatency: { name: 'userfault_source_read_latency_seconds', type: 'histogram', component: 'pager', help: 'Time one source read took, from started to its bytes in hand. Buckets double from 1 µs.' },

  // ---- the VMM
  vmState: {
    name: 'userfault_vm_state', type: 'gauge', component: 'vm', labels: { state: VM_STATES },
    help: '1 for the VM\'s lifecycle state now (one series at a time).',
  },
  vmMemory: { name: 'userfault_vm_memory_bytes', type: 'gauge', component: 'vm', help: 'Guest RAM.' },
  vcpuState: {
    name: 'userfault_vcpu_state', type: 'gauge', component: 'vm', labels: { vcpu: 'the vCPU id, 0 to 254', state: VCPU_STATES },
    help: '1 for each vCPU\'s run state now.',
  },
  vcpuExits: {
    name: 'userfault_vcpu_exits_total', type: 'counter', component: 'vm', labels: { vcpu: 'the vCPU id, 0 to 254', reason: VCPU_EXIT_REASONS },
    help: 'Exits of KVM_RUN to the VMM, by vCPU and exit reason (kvm_run.exit_reason: io is port I/O, mmio, intr a signal, ...). Counted in shared memory by the vCPU thread: live while the guest runs.',
  },
  vcpuKicks: { name: 'userfault_vcpu_kicks_total', type: 'counter', component: 'vm', labels: { vcpu: 'the vCPU id, 0 to 254' }, help: 'Times the VMM kicked a vCPU out of the guest to hand it a command (pause, input, stop).' },
  vcpuBlocked: {
    name: 'userfault_vcpu_blocked_seconds_total', type: 'counter', component: 'vm', labels: { vcpu: 'the vCPU id, 0 to 254' },
    help: 'Time each vCPU spent blocked on missing guest pages during a lazy restore or a post-copy migration (QEMU\'s postcopy blocktime, per vCPU); faults resolved so far.',
  },
  restoreReady: {
    name: 'userfault_restore_ready_seconds', type: 'gauge', component: 'vm', labels: { mode: ['eager', 'lazy'] },
    help: 'A restored VM: time from the start of the restore until it was ready to resume.',
  },
  restoreComplete: { name: 'userfault_restore_memory_complete', type: 'gauge', component: 'vm', labels: { mode: ['eager', 'lazy'] }, help: 'A restored VM: 1 once every stored page is in guest RAM (at once for an eager restore), else 0.' },

  // ---- live migration (the VMM: out as the source, in as the destination)
  migrationState: { name: 'userfault_migration_state', type: 'gauge', component: 'migration', labels: { role: ROLE, state: MIGRATION_STATES }, help: '1 for the migration\'s phase now.' },
  migrationTransferredBytes: {
    name: 'userfault_migration_transferred_bytes_total', type: 'counter', component: 'migration', labels: { role: ROLE },
    help: 'Bytes written (source) or received (destination) on the migration\'s connections, frames included.',
  },
  migrationRemainingBytes: { name: 'userfault_migration_remaining_bytes', type: 'gauge', component: 'migration', labels: { role: ['source'] }, help: 'Guest RAM still to send: dirty pages in pre-copy, pages not yet sent in post-copy.' },
  migrationRate: { name: 'userfault_migration_rate_bytes_per_second', type: 'gauge', component: 'migration', labels: { role: ['source'] }, help: 'Send rate over the last pre-copy round, or since switchover in post-copy.' },
  migrationDirtyRate: { name: 'userfault_migration_dirty_pages_per_second', type: 'gauge', component: 'migration', labels: { role: ['source'] }, help: 'Pages the guest dirtied per second during the last pre-copy round (KVM\'s dirty log).' },
  migrationRounds: { name: 'userfault_migration_precopy_rounds_total', type: 'counter', component: 'migration', labels: { role: ROLE }, help: 'Pre-copy rounds done (source) or seen (destination).' },
  migrationPages: {
    name: 'userfault_migration_pages_total', type: 'counter', component: 'migration', labels: { role: ROLE, kind: ['data', 'zero', 'pushed', 'stale'] },
    help: 'Pages sent (source) or received (destination): data in pre-copy, zero markers, pushed in post-copy; stale (destination) are pre-copy pages dropped at switchover because the source changed them after sending.',
  },
  migrationPostcopyRequests: {
    name: 'userfault_migration_postcopy_requests_total', type: 'counter', component: 'migration', labels: { role: ROLE },
    help: 'Post-copy demand requests: pages the destination\'s guest faulted on and asked the source for (the destination\'s fault latency is userfault_fault_latency_seconds, its blocktime userfault_vcpu_blocked_seconds_total).',
  },
  migrationDowntime: { name: 'userfault_migration_downtime_seconds', type: 'gauge', component: 'migration', labels: { role: ['source'] }, help: 'Downtime of the completed switchover: source paused to destination running.' },
  migrationExpectedDowntime: { name: 'userfault_migration_expected_downtime_seconds', type: 'gauge', component: 'migration', labels: { role: ['source'] }, help: 'Pre-copy: the downtime a switchover now would cost (dirty pages over the rate).' },
  migrationRecoveries: { name: 'userfault_migration_recoveries_total', type: 'counter', component: 'migration', labels: { role: ROLE }, help: 'Post-copy connection cuts recovered from.' },
  migrationElapsed: { name: 'userfault_migration_elapsed_seconds', type: 'gauge', component: 'migration', labels: { role: ROLE }, help: 'Time since the migration started.' },

  // ---- a network source (a page server, an object store, a migration source) read by this process
  sourceUnavailable: {
    name: 'userfault_source_unavailable', type: 'gauge', component: 'source',
    help: '1 while the source\'s peer is unreachable (a page server\'s connection lost, the store failing, a post-copy migration\'s source cut off) and reads wait for it, else 0.',
  },
  sourceOutages: { name: 'userfault_source_outages_total', type: 'counter', component: 'source', help: 'Outages of the source\'s peer begun (each from the first path lost to the last one back, or the source given up).' },
  sourceOutageSeconds: { name: 'userfault_source_outage_seconds_total', type: 'counter', component: 'source', help: 'Time the source\'s peer was unreachable, the current outage so far included.' },
  sourceReadsWaiting: { name: 'userfault_source_reads_waiting', type: 'gauge', component: 'source', help: 'Reads of the source blocked by the current outage (each one or more faulting threads, or a read-ahead); 0 while its peer is reachable.' },

  // ---- userfault serve: the page-fault handler service
  handlerClients: {
    name: 'userfault_handler_clients', type: 'gauge', component: 'handler', labels: { state: HANDLER_CLIENT_STATES },
    help: 'Clients connected now, by state (a handshake being read, the pager starting, serving, closing).',
  },
  handlerClientsEnded: {
    name: 'userfault_handler_clients_ended_total', type: 'counter', component: 'handler', labels: { reason: HANDLER_CLIENT_END_REASONS },
    help: 'Client sessions over, by why: the client hung up, its process exited, its handshake was refused, its socket or uffd failed, the server shut down.',
  },
  handlerProbePages: { name: 'userfault_handler_probe_pages_copied_total', type: 'counter', component: 'handler', help: 'Pages copied by the region probe before a client\'s pager started (not in userfault_pages_installed_total).' },

  // ---- userfault pages serve: the page server
  pageServerClients: { name: 'userfault_page_server_clients', type: 'gauge', component: 'page-server', help: 'Connections open now.' },
  pageServerConnections: { name: 'userfault_page_server_connections_total', type: 'counter', component: 'page-server', help: 'Connections accepted.' },
  pageServerRequests: { name: 'userfault_page_server_requests_total', type: 'counter', component: 'page-server', help: 'Requests received (READ, GET_METADATA, GET_ZERO_MAP, PING, CANCEL).' },
  pageServerReads: { name: 'userfault_page_server_reads_total', type: 'counter', component: 'page-server', help: 'READ requests served or under way.' },
  pageServerServedBytes: { name: 'userfault_page_server_served_bytes_total', type: 'counter', component: 'page-server', help: 'Page bytes sent in PAGES replies.' },
  pageServerSentBytes: { name: 'userfault_page_server_sent_bytes_total', type: 'counter', component: 'page-server', help: 'Every byte written to clients, frame headers included.' },
  pageServerErrorsSent: { name: 'userfault_page_server_errors_sent_total', type: 'counter', component: 'page-server', help: 'ERROR replies sent (out-of-range requests, source failures, cancellations, refusals).' },
  pageServerCancelled: { name: 'userfault_page_server_reads_cancelled_total', type: 'counter', component: 'page-server', help: 'Reads a client cancelled.' },
  pageServerSourceErrors: { name: 'userfault_page_server_source_errors_total', type: 'counter', component: 'page-server', help: 'Reads of the snapshot that failed (a corrupt page, an I/O error).' },
  pageServerQueuedReplyBytes: { name: 'userfault_page_server_queued_reply_bytes', type: 'gauge', component: 'page-server', help: 'Reply bytes held now: pages of reads under way and replies the kernel has not taken from the sockets (bounded by maxQueuedReplyBytes).' },
  pageServerReadLatency: { name: 'userfault_page_server_read_latency_seconds', type: 'histogram', component: 'page-server', help: 'Time the server took to read one READ\'s pages from the snapshot. Buckets double from 1 µs.' },
});

export type MetricId = keyof typeof METRICS;
