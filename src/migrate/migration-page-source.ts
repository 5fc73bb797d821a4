// The destination's page source during post-copy: the pages the guest still
// needs come from the source VMM over the migration's connections. A demand
// read (a vCPU waits) is a READ on the urgent connection; a background read on
// the main one; the source also pushes every page it has not sent, unasked,
// on the main connection (PUSH, and MIG_ZERO runs for zero pages), which the
// pager installs where still missing. A READ is a request of its connection
// (transport/framed-connection.ts matches its reply by id and type, as for
// every other request on a framed connection), and every reply is checked
// against its request before a byte reaches the pager; the bytes handed over
// are recorded in the destination's digest table (what it installs is what
// it hashes).
//
// A lost connection is not a failed read: reads stay pending (the vCPUs block
// on their pages, nothing is poisoned) until the connections come back or the
// migration is given up, and the outage is said out loud as every network
// source's is (onAvailability: 'unavailable' at the cut, 'restored' at the
// source's RESUME; the destination decides when to give up). Its READs live in the request table every network
// source shares (src/sources/network/): their states, the reads waiting, a
// CANCEL when nobody waits any more, every read failed at close.
import type { CheckedPagesMessage, ErrorMessage } from '../protocol/index.js';
import type { MigrationMessage } from './protocol/messages.js';
import { SourceReadError, readRequestRefusal, type PageSource, type PushedPages, type ReadOptions, type ReadPriority } from '../sources/page-source.js';
import { SourceAvailability, type AvailabilityEvent, type AvailabilityStats } from '../sources/network/availability.js';
import { RequestTable, type NetworkRequest } from '../sources/network/request-table.js';
import type { PageBitmap } from '../pager/page-bitmap.js';
import type { PageDigestTable } from './page-digests.js';
import type { MigrationConnection } from './transport/migration-connection.js';
import { MigrationPageChecksumError, MigrationReplyError } from './errors.js';

/** One post-copy READ (reads of a range are not coalesced, the pager asks each page once). */
interface PostCopyRead extends NetworkRequest<Uint8Array> {
  /** Its request id on the connection it was last sent on (0 before it was sent). */
  requestId: number;
  /** Cancelled after it was sent: the source answers it anyway (every READ gets its reply), and the answer is dropped. */
  cancelled: boolean;
  readonly offset: number;
  readonly lengthBytes: number;
  readonly priority: ReadPriority;
  /** The connection it was (or is to be) sent on: the urgent one for demand, the main one for background. */
  connection: MigrationConnection;
}

export class MigrationPageSource implements PageSource {
  readonly description: string;
  private readonly availability = new SourceAvailability({
    description: () => this.description,
    onEnd: () => this.table.failAll((read) => this.availability.readError(read.offset, read.lengthBytes)),
    readsWaiting: () => this.table.pendingReads,
    // A post-copy cut is never routine (the guest's pages are only there): said however short.
    announceAfterMs: 0,
  });
  /** The source's connections cut: no deadline here (the destination's own decide), and this side does not retry: the source reconnects. */
  private readonly cut = this.availability.outage({ deadlineMs: Infinity, retrying: false, initialDelayMs: 0, maxDelayMs: 0, expired: (_waitedMs, last) => last ?? new Error('the migration source did not come back') });
  private readonly table = new RequestTable<PostCopyRead, Uint8Array>({
    // Never sent (its connection was lost first): nothing to tell the source.
    dequeue: () => undefined,
    cancel: (read) => {
      read.cancelled = true;
      if (!read.connection.isEnded) read.connection.send({ type: 'cancel', readRequestId: read.requestId }).catch(() => {});
      return true;
    },
  });
  /** The table's key of the next read (its request id is the connection's to give). */
  private nextReadKey = 1;
  private readonly listeners = new Set<(pages: PushedPages) => void>();
  private readonly zeroBuffer: Uint8Array;
  private urgent: MigrationConnection | undefined;
  private main: MigrationConnection | undefined;
  /** Post-copy READs sent on the urgent connection (demand) and the main one (background). */
  readonly stats = { demandReads: 0, backgroundReads: 0, pushedPages: 0, pushedZeroPages: 0 };

  constructor(
    readonly sizeBytes: number,
    private readonly pageSizeBytes: number,
    /** Pages known to be zero now (received as zero markers and not dirtied since). */
    private readonly knownZero: PageBitmap,
    private readonly digests: PageDigestTable,
    where: string,
  ) {
    this.description = `migration source ${where}`;
    this.zeroBuffer = new Uint8Array(pageSizeBytes * 64);
  }

  /** Use these connections (again, after a reconnect): outstanding reads are re-sent on them, and an outage is over. */
  attach(main: MigrationConnection, urgent: MigrationConnection): void {
    this.main = main;
    this.urgent = urgent;
    this.cut.restored();
    for (const read of [...this.table.requests()]) {
      if (read.state === 'sent') this.table.move(read, 'retry');
      read.connection = read.priority === 'demand' ? urgent : main;
      this.sendRead(read);
    }
  }

  /**
   * Pages the source pushed, unasked (PUSH). Every page is checked against
   * the CRC32C the source computed for it before a byte reaches the pager: a
   * page altered on the way ends the connection (a cut: the source
   * reconnects and sends it again), and is never installed.
   */
  pushed(message: Extract<MigrationMessage, { type: 'mig-push' }>): void {
    this.deliverPush(message.firstPage * this.pageSizeBytes, message.data, message.checksums);
  }

  /**
   * The reply to a READ, matched to it by the connection. Checked like a
   * push; what this throws ends that connection (the framed connection's
   * boundary), the read staying pending to be sent again on the next one.
   */
  private answered(read: PostCopyRead, reply: CheckedPagesMessage | ErrorMessage, from: MigrationConnection): void {
    // A reply on a connection a reconnect replaced, or to a read cancelled or already re-sent: nobody waits on it here.
    if (read.cancelled || read.connection !== from || read.state !== 'sent' || this.table.get(read.key) !== read) return;
    if (reply.type === 'error') {
      this.table.fail(read, (waiting) => new SourceReadError(waiting.offset, waiting.lengthBytes, `the migration source refused the read: ${reply.code}: ${reply.text}`, { failure: 'fatal' }));
      return;
    }
    if (reply.offset !== read.offset || reply.data.length !== read.lengthBytes) {
      throw new MigrationReplyError(`PAGES for request ${read.requestId} carries ${reply.data.length} bytes at ${reply.offset}; ${read.lengthBytes} at ${read.offset} were asked`);
    }
    this.check(read.offset, reply.data, reply.checksums);
    this.table.deliver(read, reply.data);
  }

  /** Zero pages the source pushes as a marker (MIG_ZERO during post-copy). */
  pushZero(firstPage: number, pageCount: number): void {
    for (let at = 0; at < pageCount; at += 64) {
      const count = Math.min(64, pageCount - at);
      for (let i = 0; i < count; i++) this.digests.recordZero(firstPage + at + i);
      this.stats.pushedZeroPages += count;
      this.emitPush((firstPage + at) * this.pageSizeBytes, this.zeroBuffer.subarray(0, count * this.pageSizeBytes));
    }
  }

  read(offset: number, lengthBytes: number, target: Uint8Array, options: ReadOptions = {}): Promise<void> {
    if (offset < 0 || lengthBytes <= 0 || offset + lengthBytes > this.sizeBytes || offset % this.pageSizeBytes || lengthBytes % this.pageSizeBytes) {
      return Promise.reject(new SourceReadError(offset, lengthBytes, `outside the ${this.sizeBytes}-byte guest memory`, { failure: 'fatal' }));
    }
    if (!this.availability.isOpen) return Promise.reject(this.availability.readError(offset, lengthBytes));
    const refusal = readRequestRefusal(this, offset, lengthBytes, target, options.signal);
    if (refusal) return Promise.reject(refusal);
    const priority = options.priority ?? 'demand';
    return this.table.read({ offset, lengthBytes, priority, signal: options.signal, onPart: (_read, data) => target.set(data) }, (pending) => {
      const connection = (priority === 'demand' ? this.urgent : this.main)!;
      const read: PostCopyRead = { key: String(this.nextReadKey++), state: 'queued', waiters: new Set(), requestId: 0, cancelled: false, offset, lengthBytes, priority, connection };
      this.table.add(read);
      this.table.join(pending, read);
      if (priority === 'demand') this.stats.demandReads++;
      else this.stats.backgroundReads++;
      this.sendRead(read);
    });
  }

  isZero(offset: number, lengthBytes: number): boolean {
    const first = offset / this.pageSizeBytes;
    const count = Math.ceil(lengthBytes / this.pageSizeBytes);
    for (let page = first; page < first + count; page++) if (!this.knownZero.get(page)) return false;
    return true;
  }

  /** The known-zero bitmap as one byte a page (what a pager starting on all of guest RAM asks once). */
  zeroPageMask(pageSize: number): Uint8Array | undefined {
    return pageSize === this.pageSizeBytes ? this.knownZero.toByteMask() : undefined;
  }

  onPush(listener: (pages: PushedPages) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The source's connections were cut: its reads wait until it reconnects (attach), and the outage is said out loud. */
  connectionLost(error: Error): void {
    this.cut.lost(error);
  }

  /** The source's cuts so far (each until it reconnected), and the current one. */
  get availabilityStats(): AvailabilityStats {
    return this.availability.availabilityStats;
  }

  /** Hear the migration source's connections be cut, come back, or the migration be given up (AvailabilityEvent). */
  onAvailability(listener: (event: AvailabilityEvent) => void): () => void {
    return this.availability.onAvailability(listener);
  }

  get outstandingReads(): number {
    return this.table.size;
  }

  /** Fail every read still waiting, and every read after (SourceGoneError): the migration is given up, or the VM is going away. */
  close(): void {
    this.cut.stop();
    this.availability.close(new Error('the migration ended'));
  }

  private sendRead(read: PostCopyRead): void {
    // A send on a lost connection is retried by attach() on the next one.
    if (read.connection.isEnded) return;
    this.table.move(read, 'sent');
    const connection = read.connection;
    read.requestId = connection.request(
      { type: 'read', offset: read.offset, lengthBytes: read.lengthBytes, priority: read.priority },
      { expect: ['checked-pages'], onReply: (reply) => this.answered(read, reply as CheckedPagesMessage | ErrorMessage, connection) },
    );
  }

  private deliverPush(offset: number, data: Uint8Array, checksums: Uint32Array): void {
    if (offset % this.pageSizeBytes || data.length % this.pageSizeBytes || offset + data.length > this.sizeBytes) {
      throw new MigrationReplyError(`a PUSH of ${data.length} bytes at ${offset} is not whole pages of guest memory`);
    }
    this.check(offset, data, checksums);
    this.stats.pushedPages += data.length / this.pageSizeBytes;
    this.emitPush(offset, data);
  }

  /** Each page against its checksum, recorded as installed only when all match (page-digests.ts). */
  private check(offset: number, data: Uint8Array, checksums: Uint32Array): void {
    const bad = this.digests.checkAndRecord(offset / this.pageSizeBytes, data, checksums);
    if (bad >= 0) throw new MigrationPageChecksumError(bad);
  }

  private emitPush(offset: number, bytes: Uint8Array): void {
    for (const listener of this.listeners) listener({ offset, bytes });
  }
}
