// The page server's bound on reply bytes held in memory: the pages of READs
// being read from the source plus every reply written to a socket that the
// kernel has not taken yet. A client that asks for pages and never reads its
// socket would otherwise hold every reply it asked for (the probe of issue 17
// took the server to 4 GB with 128 such clients).
//
// Two bounds, shared by every connection of one server:
//
//   per connection  a connection holding `maxPerConnectionBytes` starts
//                   nothing more until its socket takes some (its requests
//                   wait, then its socket is not read: TCP pushes back on it);
//   in total        `maxTotalBytes`, shared fairly: beyond its first reply a
//                   connection takes at most its fair share (the total over the
//                   connections holding or waiting for bytes), and when the
//                   total is used up the connections waiting are given room in
//                   the order they asked.
//
// A connection holding nothing may always start one reply when the total has
// room, so a new client is never refused for being new. Room a stalled
// client holds is taken back by closing it (relievePressure): under pressure
// (someone waits) a connection over its fair share whose socket has taken
// nothing for `evictStalledAfterMs` is closed, the largest first, as Envoy's
// overload manager resets the streams holding the most buffer.
//
// This is pure bookkeeping: the connection says when bytes are taken and
// released; nothing here touches a socket.

export interface BudgetHolder {
  /** Room may have been freed for a holder that waited: it tries again (called from setImmediate, never re-entrantly). */
  onRoom(): void;
  /** How long its socket has taken none of its written reply bytes; undefined when none are waiting to be taken. */
  stalledForMs(nowMs: number): number | undefined;
  /** Close it at once, freeing what it holds: it stalled while others waited for room. */
  evict(reason: string): void;
}

export interface ReplyBudgetLimits {
  maxTotalBytes: number;
  maxPerConnectionBytes: number;
  evictStalledAfterMs: number;
}

/** Why a reply could not start now. 'wait': for room in the total (the holder is told onRoom); the others: until its own bytes drain. */
export type TakeOutcome = 'taken' | 'connection-full' | 'over-share' | 'wait';

export class ReplyBudget {
  private totalBytes = 0;
  private peakBytes = 0;
  private readonly held = new Map<BudgetHolder, number>();
  /** Holders waiting for room in the total, first come first served, with the size each asked for. */
  private readonly waiting: Array<{ holder: BudgetHolder; bytes: number }> = [];
  /** The waiter being given room now: it may take ahead of the queue it was at the head of. */
  private admitting: BudgetHolder | undefined;
  private wakeScheduled = false;
  private evictedCount = 0;

  constructor(readonly limits: ReplyBudgetLimits) {}

  /** Bytes held by every connection now. */
  get queuedBytes(): number {
    return this.totalBytes;
  }

  /** The most ever held at once. */
  get peakQueuedBytes(): number {
    return this.peakBytes;
  }

  /** Connections waiting for room in the total now. */
  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Connections closed because they stalled holding room others waited for. */
  get evictions(): number {
    return this.evictedCount;
  }

  heldBy(holder: BudgetHolder): number {
    return this.held.get(holder) ?? 0;
  }

  /** The total over the connections holding or waiting for bytes (`extra` counted too when it is neither). */
  fairShareBytes(extra?: BudgetHolder): number {
    // Called for every request a connection starts: no allocation, and the waiters (usually none) are the only loop.
    let contenders = this.held.size;
    let extraCounted = extra === undefined || this.held.has(extra);
    for (const w of this.waiting) {
      if (this.held.has(w.holder)) continue;
      contenders++;
      if (w.holder === extra) extraCounted = true;
    }
    if (!extraCounted) contenders++;
    return Math.floor(this.limits.maxTotalBytes / Math.max(1, contenders));
  }

  /** Take `bytes` for one reply of `holder`, or say why it must wait. */
  take(holder: BudgetHolder, bytes: number): TakeOutcome {
    const holding = this.heldBy(holder);
    const at = this.waiting.findIndex((w) => w.holder === holder);
    if (holding > 0) {
      let outcome: TakeOutcome | undefined;
      if (holding + bytes > this.limits.maxPerConnectionBytes) outcome = 'connection-full';
      else if (holding + bytes > this.fairShareBytes(holder)) outcome = 'over-share';
      if (outcome) {
        // It will try again when its own bytes drain, not when others' do.
        if (at !== -1) this.waiting.splice(at, 1);
        return outcome;
      }
    }
    // First come, first served: a holder does not take room ahead of those already waiting for it.
    const mayGoFirst = this.admitting === holder || at === 0 || (at === -1 && this.waiting.length === 0);
    if (!mayGoFirst || this.totalBytes + bytes > this.limits.maxTotalBytes) {
      if (at !== -1) this.waiting[at]!.bytes = bytes;
      else if (this.admitting === holder) this.waiting.unshift({ holder, bytes });
      else this.waiting.push({ holder, bytes });
      return 'wait';
    }
    if (at !== -1) this.waiting.splice(at, 1);
    this.add(holder, bytes);
    return 'taken';
  }

  /**
   * Count bytes that are not asked for (a PONG, an ERROR, the HELLO answer):
   * small, and bounded per connection by its socket being paused while its
   * write buffer is full, so they may pass the bounds by that much.
   */
  charge(holder: BudgetHolder, bytes: number): void {
    this.add(holder, bytes);
  }

  release(holder: BudgetHolder, bytes: number): void {
    const holding = this.heldBy(holder);
    if (bytes > holding) throw new Error(`releasing ${bytes} reply bytes of a connection holding ${holding}`);
    if (holding === bytes) this.held.delete(holder);
    else this.held.set(holder, holding - bytes);
    this.totalBytes -= bytes;
    if (this.waiting.length > 0) this.scheduleWake();
  }

  /** The holder no longer wants room (it is closing); what it holds is released as its bytes are. */
  withdraw(holder: BudgetHolder): void {
    const at = this.waiting.findIndex((w) => w.holder === holder);
    if (at !== -1) this.waiting.splice(at, 1);
    if (this.waiting.length > 0) this.scheduleWake();
  }

  /**
   * While connections wait for room: close connections over their fair share
   * whose sockets took nothing for evictStalledAfterMs, the largest first,
   * until what they hold covers what the waiters asked for.
   */
  relievePressure(nowMs: number): void {
    if (this.waiting.length === 0) return;
    let needBytes = this.totalBytes + this.waiting.reduce((sum, w) => sum + w.bytes, 0) - this.limits.maxTotalBytes;
    if (needBytes <= 0) return;
    const shareBytes = this.fairShareBytes();
    const stalled = [...this.held].filter(([holder, bytes]) => {
      if (bytes <= shareBytes) return false;
      const stalledMs = holder.stalledForMs(nowMs);
      return stalledMs !== undefined && stalledMs >= this.limits.evictStalledAfterMs;
    }).sort((a, b) => b[1] - a[1]);
    for (const [holder, bytes] of stalled) {
      if (needBytes <= 0) break;
      needBytes -= bytes;
      this.evictedCount++;
      holder.evict(`its socket took none of its ${bytes} queued reply bytes for ${this.limits.evictStalledAfterMs} ms or more while other connections waited for room`);
    }
  }

  private add(holder: BudgetHolder, bytes: number): void {
    this.held.set(holder, this.heldBy(holder) + bytes);
    this.totalBytes += bytes;
    this.peakBytes = Math.max(this.peakBytes, this.totalBytes);
  }

  private scheduleWake(): void {
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    setImmediate(() => {
      this.wakeScheduled = false;
      this.wake();
    });
  }

  /** Give room to the waiters in order, while the first one's reply fits. */
  private wake(): void {
    while (this.waiting.length > 0) {
      const first = this.waiting[0]!;
      if (this.totalBytes + first.bytes > this.limits.maxTotalBytes) return;
      this.waiting.shift();
      this.admitting = first.holder;
      try {
        first.holder.onRoom();
      } finally {
        this.admitting = undefined;
      }
      // It asked again and did not fit (unshifted back to the head): the rest wait behind it.
      if (this.waiting[0]?.holder === first.holder) return;
    }
  }
}
