// What the destination accepts of a migration's main stream before
// switchover, and in what order: every message is checked against what may
// come now before guest RAM is touched, so a malformed, hostile, reordered or
// duplicated stream ends in a typed error and its bytes never land. Pure: no
// sockets, no VM — guest RAM is a target it writes through (the fuzz tests
// drive it with a plain buffer), and the machine and its state are checked by
// the machine kind's own schema (vm/migratable.ts).
//
// The canonical order the source keeps, and this checks:
//   BEGIN                       first, once
//   PAGES / ZERO (round r)      r is the current round; within a round, each run starts at or past
//                               the end of the one before (pages ascending, none twice)
//   ROUND r                     closes round r (r = the current round); the next one starts
//   DIRTY                       after pre-copy's pages; each list numbered past the one before,
//                               its chunks ascending, none twice; within guest RAM
//   SWITCHOVER                  once; after it, nothing of pre-copy
//   requests (BEGIN, SWITCHOVER, then GO, RESUME)   ids strictly increasing over the session, as the
//                               source numbers them: a replayed or duplicated request is refused
import { UserfaultError } from '../errors.js';
import type { MigrationMode } from './convergence.js';
import { PageBitmap } from '../pager/page-bitmap.js';
import { PageDigestTable } from './page-digests.js';
import type { MigratableMachineKind } from '../vm/migratable.js';
import type { MigrationMessage } from './protocol/messages.js';
import { MigrationStreamError } from './errors.js';

/** Where pre-copy's pages go: guest RAM, not registered with userfaultfd yet (the thread may touch it). */
export interface GuestRamTarget {
  /** Write whole pages from `firstPage`. */
  writePages(firstPage: number, data: Uint8Array): void;
  /** Make a page that held data zero again. */
  zeroPage(page: number): void;
}

type Phase = 'begin' | 'precopy' | 'dirty' | 'switched';

export class IncomingStream<Machine extends { memoryBytes: number } = { memoryBytes: number }, State = unknown> {
  private phase: Phase = 'begin';
  private machineValue: Machine | undefined;
  private modeValue: MigrationMode | undefined;
  private pagesValue = 0;
  private round = 0;
  /** Within the current round (or the dirty list): where the next run may start. */
  private cursor = 0;
  /** The dirty list under way (-1: none yet). */
  private dirtyListNumber = -1;
  private lastRequestId = 0;
  received!: PageBitmap;
  knownZero!: PageBitmap;
  dirty!: PageBitmap;
  digests!: PageDigestTable;
  readonly stats = { dataPagesReceived: 0, zeroPagesReceived: 0, rounds: 0 };

  constructor(
    private readonly pageSizeBytes: number,
    private readonly kind: Pick<MigratableMachineKind<Machine, State>, 'parseMachine' | 'parseState'>,
    private readonly maxMemoryBytes = Number.MAX_SAFE_INTEGER,
  ) {}

  get machine(): Machine | undefined {
    return this.machineValue;
  }

  get mode(): MigrationMode | undefined {
    return this.modeValue;
  }

  get pageCount(): number {
    return this.pagesValue;
  }

  get switched(): boolean {
    return this.phase === 'switched';
  }

  /** A request from the source: its id must be past every one before it (no replay, no duplicate). */
  request(what: string, requestId: number): void {
    if (requestId <= this.lastRequestId) throw new MigrationStreamError('replay', `${what} with request id ${requestId}, not past ${this.lastRequestId}: a replayed or duplicated request`);
    this.lastRequestId = requestId;
  }

  /** BEGIN: the machine to build (its description checked by its kind's own schema). */
  begin(message: Extract<MigrationMessage, { type: 'mig-begin' }>, requestId: number): Machine {
    if (this.phase !== 'begin') throw new MigrationStreamError('once', 'a second BEGIN');
    this.request('BEGIN', requestId);
    if (message.pageSizeBytes !== this.pageSizeBytes) throw new MigrationStreamError('page-size', `the source's pages are ${message.pageSizeBytes} bytes; this host's are ${this.pageSizeBytes}`);
    let machine: Machine;
    try {
      machine = this.kind.parseMachine(JSON.parse(message.machineJson));
    } catch (error) {
      if (error instanceof UserfaultError || error instanceof SyntaxError) throw new MigrationStreamError('machine', `the machine in BEGIN: ${error.message}`, { cause: error });
      throw error;
    }
    if (machine.memoryBytes !== message.memoryBytes) throw new MigrationStreamError('machine', `BEGIN says ${message.memoryBytes} bytes of memory, its machine ${machine.memoryBytes}`);
    if (machine.memoryBytes > this.maxMemoryBytes) throw new MigrationStreamError('machine', `a ${machine.memoryBytes}-byte machine is more than this destination builds`);
    this.machineValue = machine;
    this.modeValue = message.mode;
    this.pagesValue = machine.memoryBytes / this.pageSizeBytes;
    this.received = new PageBitmap(this.pagesValue);
    this.knownZero = new PageBitmap(this.pagesValue);
    this.dirty = new PageBitmap(this.pagesValue);
    this.digests = new PageDigestTable(this.pagesValue, this.pageSizeBytes);
    this.phase = 'precopy';
    return machine;
  }

  /** PAGES: written into guest RAM only once every rule holds. `dataCrcs`: each page's CRC32C as the frame's check computed it. */
  pages(message: Extract<MigrationMessage, { type: 'mig-pages' }>, target: GuestRamTarget, dataCrcs?: Uint32Array): void {
    this.checkRun('PAGES', message.firstPage, message.pageCount, message.round);
    if (message.data.length !== message.pageCount * this.pageSizeBytes) throw new MigrationStreamError('length', `PAGES of ${message.pageCount} pages carries ${message.data.length} bytes`);
    // Each page against the checksum the source computed from the bytes it read, before a byte lands.
    const bad = this.digests.checkAndRecord(message.firstPage, message.data, message.checksums, dataCrcs);
    if (bad >= 0) throw new MigrationStreamError('checksum', `page ${bad} arrived with bytes that do not match the CRC32C the source computed for it: altered on the way`);
    target.writePages(message.firstPage, message.data);
    for (let page = message.firstPage; page < message.firstPage + message.pageCount; page++) {
      this.received.set(page);
      this.knownZero.clear(page);
    }
    this.stats.dataPagesReceived += message.pageCount;
  }

  /** ZERO (pre-copy): a page that had data here is zeroed; one never written is zero already (untouched anonymous memory). */
  zero(message: Extract<MigrationMessage, { type: 'mig-zero' }>, target: GuestRamTarget): void {
    this.checkRun('ZERO', message.firstPage, message.pageCount, message.round);
    for (let page = message.firstPage; page < message.firstPage + message.pageCount; page++) {
      if (this.received.get(page) && !this.knownZero.get(page)) target.zeroPage(page);
      this.received.set(page);
      this.knownZero.set(page);
      this.digests.recordZero(page);
    }
    this.stats.zeroPagesReceived += message.pageCount;
  }

  roundEnd(message: Extract<MigrationMessage, { type: 'mig-round' }>): void {
    this.expect('ROUND', ['precopy']);
    if (message.round !== this.round) throw new MigrationStreamError('order', `ROUND ${message.round} while round ${this.round} is under way`);
    this.round++;
    this.cursor = 0;
    this.stats.rounds = this.round;
  }

  /**
   * DIRTY: pages whose copy here is stale. They are received no more (the
   * pager fetches them); the answer is the runs of pages newly stale, which
   * the caller must drop from guest RAM before the guest runs.
   */
  dirtyList(message: Extract<MigrationMessage, { type: 'mig-dirty' }>): Array<[first: number, count: number]> {
    this.expect('DIRTY', ['precopy', 'dirty']);
    this.phase = 'dirty';
    if (message.list < this.dirtyListNumber) throw new MigrationStreamError('order', `DIRTY of list ${message.list} after list ${this.dirtyListNumber}`);
    if (message.list > this.dirtyListNumber) {
      this.dirtyListNumber = message.list;
      this.cursor = 0;
    }
    this.checkRange('DIRTY', message.firstPage, message.pageCount);
    if (message.firstPage < this.cursor) throw new MigrationStreamError('order', `DIRTY from page ${message.firstPage} after one that reached page ${this.cursor}`);
    this.cursor = message.firstPage + message.pageCount;
    const stale: Array<[number, number]> = [];
    for (let i = 0; i < message.pageCount; i++) {
      if (!(message.bitmap[i >>> 3]! & (1 << (i & 7)))) continue;
      const page = message.firstPage + i;
      if (this.dirty.get(page)) continue;
      this.dirty.set(page);
      this.received.clear(page);
      this.knownZero.clear(page);
      const last = stale.at(-1);
      if (last && last[0] + last[1] === page) last[1]++;
      else stale.push([page, 1]);
    }
    return stale;
  }

  /** SWITCHOVER: the machine's state, checked by its kind's schema and against the machine BEGIN built. */
  switchover(message: Extract<MigrationMessage, { type: 'mig-switchover' }>, requestId: number): State {
    this.expect('SWITCHOVER', ['precopy', 'dirty']);
    this.request('SWITCHOVER', requestId);
    let state: State;
    try {
      state = this.kind.parseState(JSON.parse(message.stateJson), this.machineValue!);
    } catch (error) {
      if (error instanceof UserfaultError || error instanceof SyntaxError) throw new MigrationStreamError('state', `the state in SWITCHOVER: ${error.message}`, { cause: error });
      throw error;
    }
    if (!message.postcopy) {
      const missing = this.pagesValue - this.received.count();
      if (missing > 0) throw new MigrationStreamError('complete', `stop-and-copy switchover with ${missing} page(s) never sent`);
      if (this.dirty.count() > 0) throw new MigrationStreamError('complete', 'stop-and-copy switchover with a dirty list (those pages were to be sent)');
    }
    this.phase = 'switched';
    return state;
  }

  /** The stream ended (the connection closed): before switchover that is a migration that did not happen. */
  end(): void {
    if (this.phase !== 'switched') throw new MigrationStreamError('truncated', `the stream ended ${this.phase === 'begin' ? 'before BEGIN' : 'before switchover'}`);
  }

  private expect(what: string, phases: readonly Phase[]): void {
    if (!phases.includes(this.phase)) {
      const where = this.phase === 'begin' ? 'before BEGIN' : this.phase === 'switched' ? 'after switchover' : this.phase === 'dirty' ? 'after the dirty list began' : 'now';
      throw new MigrationStreamError('order', `${what} ${where}`);
    }
  }

  private checkRange(what: string, firstPage: number, pageCount: number): void {
    if (!Number.isSafeInteger(firstPage) || firstPage < 0 || pageCount < 1 || firstPage + pageCount > this.pagesValue) {
      throw new MigrationStreamError('range', `${what} for pages ${firstPage}..${firstPage + pageCount - 1}: guest RAM has ${this.pagesValue} pages`);
    }
  }

  private checkRun(what: string, firstPage: number, pageCount: number, round: number): void {
    this.expect(what, ['precopy']);
    this.checkRange(what, firstPage, pageCount);
    if (round !== this.round) throw new MigrationStreamError('order', `${what} of round ${round} during round ${this.round}`);
    if (firstPage < this.cursor) throw new MigrationStreamError('order', `${what} from page ${firstPage} in round ${round}, after a run that reached page ${this.cursor} (pages come once, ascending)`);
    this.cursor = firstPage + pageCount;
  }
}
