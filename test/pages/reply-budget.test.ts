import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ReplyBudget, type BudgetHolder } from '../../src/pages/reply-budget.js';

/** A connection as the budget sees it: it records being woken and evicted, and says how long it has stalled. */
class Holder implements BudgetHolder {
  woken = 0;
  evicted: string | undefined;
  stalledMs: number | undefined;
  onWake: (() => void) | undefined;
  constructor(readonly name: string) {}
  onRoom(): void {
    this.woken++;
    this.onWake?.();
  }
  stalledForMs(): number | undefined {
    return this.stalledMs;
  }
  evict(reason: string): void {
    this.evicted = reason;
  }
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('the reply budget', () => {
  test('a connection takes up to its own bound; its first reply is always let start when the total has room', () => {
    const budget = new ReplyBudget({ maxTotalBytes: 100, maxPerConnectionBytes: 40, evictStalledAfterMs: 1000 });
    const a = new Holder('a');
    assert.equal(budget.take(a, 30), 'taken');
    assert.equal(budget.take(a, 10), 'taken');
    assert.equal(budget.take(a, 1), 'connection-full');
    budget.release(a, 10);
    assert.equal(budget.take(a, 10), 'taken');
    assert.equal(budget.heldBy(a), 40);
    assert.equal(budget.queuedBytes, 40);
  });

  test('beyond its first reply a connection takes at most its fair share of the total', () => {
    const budget = new ReplyBudget({ maxTotalBytes: 100, maxPerConnectionBytes: 100, evictStalledAfterMs: 1000 });
    const [a, b, c] = [new Holder('a'), new Holder('b'), new Holder('c')];
    assert.equal(budget.take(a, 20), 'taken');
    assert.equal(budget.take(b, 20), 'taken');
    assert.equal(budget.take(c, 20), 'taken');
    // Three contenders: 33 bytes each.
    assert.equal(budget.take(a, 10), 'taken');
    assert.equal(budget.take(a, 10), 'over-share');
    budget.release(c, 20);
    // Two now: 50 each.
    assert.equal(budget.take(a, 10), 'taken');
  });

  test('when the total is used up, connections wait and are given room in the order they asked, none jumping the queue', async () => {
    const budget = new ReplyBudget({ maxTotalBytes: 100, maxPerConnectionBytes: 100, evictStalledAfterMs: 1000 });
    const [hog, first, second] = [new Holder('hog'), new Holder('first'), new Holder('second')];
    assert.equal(budget.take(hog, 100), 'taken');
    assert.equal(budget.take(first, 60), 'wait');
    assert.equal(budget.take(second, 10), 'wait');
    budget.release(hog, 50);
    // 50 free: not enough for the first in line, so the second (who would fit) waits behind it.
    await turn();
    assert.equal(first.woken, 0);
    assert.equal(second.woken, 0);
    assert.equal(budget.take(second, 10), 'wait', 'a waiter behind the first does not take room ahead of it');
    first.onWake = () => assert.equal(budget.take(first, 60), 'taken');
    second.onWake = () => assert.equal(budget.take(second, 10), 'taken');
    budget.release(hog, 30);
    await turn();
    assert.equal(first.woken, 1);
    assert.equal(second.woken, 1);
    assert.equal(budget.waitingCount, 0);
    assert.equal(budget.queuedBytes, 90);
    assert.equal(budget.peakQueuedBytes, 100);
  });

  test('under pressure, connections over their share that stalled are closed, the largest first, until the waiters fit', () => {
    const budget = new ReplyBudget({ maxTotalBytes: 100, maxPerConnectionBytes: 100, evictStalledAfterMs: 500 });
    const [big, small, reading, newcomer] = [new Holder('big'), new Holder('small'), new Holder('reading'), new Holder('newcomer')];
    budget.take(big, 45);
    budget.take(small, 30);
    budget.take(reading, 25);
    big.stalledMs = 600;
    small.stalledMs = 600;
    reading.stalledMs = undefined;
    budget.relievePressure(0);
    assert.equal(big.evicted, undefined, 'nobody waits: nothing is closed');

    assert.equal(budget.take(newcomer, 20), 'wait');
    budget.relievePressure(0);
    assert.match(big.evicted ?? '', /took none of its 45 queued reply bytes/);
    assert.equal(small.evicted, undefined, 'one closed is enough for the 20 bytes asked');
    assert.equal(reading.evicted, undefined);
    assert.equal(budget.evictions, 1);
  });

  test('a connection that stalled for less than evictStalledAfterMs, or holds no more than its share, is not closed', () => {
    const budget = new ReplyBudget({ maxTotalBytes: 100, maxPerConnectionBytes: 100, evictStalledAfterMs: 500 });
    const [a, b, newcomer] = [new Holder('a'), new Holder('b'), new Holder('newcomer')];
    budget.take(a, 70);
    budget.take(b, 30);
    a.stalledMs = 400;
    b.stalledMs = 10_000;
    assert.equal(budget.take(newcomer, 10), 'wait');
    budget.relievePressure(0);
    assert.equal(a.evicted, undefined);
    assert.equal(b.evicted, undefined, '30 bytes is within a third of 100');
  });

  test('a connection that closes leaves the queue, and the next waiter is given room', async () => {
    const budget = new ReplyBudget({ maxTotalBytes: 100, maxPerConnectionBytes: 100, evictStalledAfterMs: 500 });
    const [hog, gone, next] = [new Holder('hog'), new Holder('gone'), new Holder('next')];
    budget.take(hog, 100);
    budget.take(gone, 50);
    budget.take(next, 50);
    budget.withdraw(gone);
    next.onWake = () => assert.equal(budget.take(next, 50), 'taken');
    budget.release(hog, 50);
    await turn();
    assert.equal(gone.woken, 0);
    assert.equal(next.woken, 1);
  });
});
