// The request table every network source shares, driven as a source drives
// it: reads join requests, requests are sent, answered, refused, retried,
// dropped or cancelled; real timers for the deadlines, each wait bounded.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SourceGoneError, isAbortError } from '../../../src/sources/page-source.js';
import { RequestTable, type NetworkRequest, type PendingRead } from '../../../src/sources/network/request-table.js';
import { IllegalTransitionError } from '../../../src/transition-table.js';

interface Fetch extends NetworkRequest<Uint8Array> {
  readonly offset: number;
  readonly lengthBytes: number;
}

/** A source's part of the table: a send queue, and a record of what it was asked to dequeue and cancel. */
class Harness {
  readonly queue: Fetch[] = [];
  readonly dequeued: string[] = [];
  readonly cancelled: string[] = [];
  cancels = true;
  readonly table = new RequestTable<Fetch, Uint8Array>({
    dequeue: (fetch) => {
      this.dequeued.push(fetch.key);
      const at = this.queue.indexOf(fetch);
      if (at !== -1) this.queue.splice(at, 1);
    },
    cancel: (fetch) => {
      this.cancelled.push(fetch.key);
      return this.cancels;
    },
  });

  /** The fetch of [offset, +length): joined when live, else made and queued. */
  fetchFor(read: PendingRead<Uint8Array>, offset: number, lengthBytes: number): Fetch {
    const key = `${offset}+${lengthBytes}`;
    const fetch = this.table.get(key) ?? this.table.add({ key, offset, lengthBytes, state: 'queued', waiters: new Set() });
    if (fetch.state === 'queued' && !this.queue.includes(fetch)) this.queue.push(fetch);
    this.table.join(read, fetch);
    return fetch;
  }

  /** A read of [offset, +length) that copies each fetch's part into its target, over fetches of `chunk` bytes. */
  read(offset: number, lengthBytes: number, options: { chunk?: number; signal?: AbortSignal; deadlineMs?: number } = {}): { promise: Promise<void>; target: Uint8Array } {
    const target = new Uint8Array(lengthBytes);
    const chunk = options.chunk ?? lengthBytes;
    const promise = this.table.read({
      offset,
      lengthBytes,
      priority: 'demand',
      signal: options.signal,
      deadlineMs: options.deadlineMs,
      onDeadline: (read) => new Error(`deadline: ${read.requests.size} request(s) missing`),
      onPart: (request, data) => {
        const fetch = request as Fetch;
        target.set(data, fetch.offset - offset);
      },
    }, (read) => {
      for (let at = offset; at < offset + lengthBytes; at += chunk) this.fetchFor(read, at, Math.min(chunk, offset + lengthBytes - at));
    });
    return { promise, target };
  }

  /** Send everything queued. */
  sendAll(): void {
    for (const fetch of this.queue.splice(0)) this.table.move(fetch, 'sent');
  }
}

const bytes = (value: number, length: number): Uint8Array => new Uint8Array(length).fill(value);

/** Whether a promise has settled by the next turn of the event loop. */
async function settledYet(promise: Promise<unknown>): Promise<boolean> {
  let settled = false;
  promise.then(() => (settled = true), () => (settled = true));
  await new Promise((resolve) => setImmediate(resolve));
  return settled;
}

describe('the request table', () => {
  test('two reads of the same range make one request; its answer reaches both, and it leaves the table', async () => {
    const h = new Harness();
    const a = h.read(0, 8);
    const b = h.read(0, 8);
    assert.equal(h.table.size, 1);
    assert.equal(h.queue.length, 1);
    const [fetch] = h.queue;
    assert.equal(fetch!.waiters.size, 2);
    h.sendAll();
    h.table.deliver(fetch!, bytes(7, 8));
    await Promise.all([a.promise, b.promise]);
    assert.deepEqual(a.target, bytes(7, 8));
    assert.deepEqual(b.target, bytes(7, 8));
    assert.equal(fetch!.state, 'done');
    assert.equal(h.table.size, 0);
    assert.equal(h.table.get(fetch!.key), undefined, 'a later read of the range makes a new request');
  });

  test('a read over several requests resolves only when the last one delivered, each part in its place', async () => {
    const h = new Harness();
    const { promise, target } = h.read(0, 12, { chunk: 4 });
    assert.equal(h.queue.length, 3);
    h.sendAll();
    const [first, second, third] = [h.table.get('0+4')!, h.table.get('4+4')!, h.table.get('8+4')!];
    h.table.deliver(third, bytes(3, 4));
    h.table.deliver(first, bytes(1, 4));
    assert.equal(await settledYet(promise), false, 'one part still missing');
    h.table.deliver(second, bytes(2, 4));
    await promise;
    assert.deepEqual([...target], [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
  });

  test('a queued request nobody waits for any more is dequeued and dropped; a sent one is cancelled; one shared stays', async () => {
    const h = new Harness();
    const controller = new AbortController();
    const aborted = h.read(0, 4, { signal: controller.signal });
    const kept = h.read(4, 4);
    const sharedAbort = new AbortController();
    const shared = h.read(4, 4, { signal: sharedAbort.signal });
    controller.abort();
    await assert.rejects(aborted.promise, (error: unknown) => isAbortError(error));
    assert.deepEqual(h.dequeued, ['0+4']);
    assert.equal(h.table.get('0+4'), undefined);
    sharedAbort.abort();
    await assert.rejects(shared.promise, (error: unknown) => isAbortError(error));
    assert.deepEqual(h.dequeued, ['0+4'], 'the other read still waits for 4+4');
    const fetch = h.table.get('4+4')!;
    h.sendAll();
    const late = new AbortController();
    const lateRead = h.read(4, 4, { signal: late.signal });
    assert.equal(fetch.waiters.size, 2, 'a read joins a sent request too');
    late.abort();
    await assert.rejects(lateRead.promise, (error: unknown) => isAbortError(error));
    assert.deepEqual(h.cancelled, [], 'not cancelled while a read waits');
    h.table.deliver(fetch, bytes(9, 4));
    await kept.promise;
    assert.deepEqual(kept.target, bytes(9, 4));

    // The last waiter of a sent request gone: cancelled on the wire, and dropped.
    const lone = new AbortController();
    const loneRead = h.read(16, 4, { signal: lone.signal });
    h.sendAll();
    const loneFetch = h.table.get('16+4')!;
    lone.abort();
    await assert.rejects(loneRead.promise, (error: unknown) => isAbortError(error));
    assert.deepEqual(h.cancelled, ['16+4']);
    assert.equal(loneFetch.state, 'dropped');
    assert.equal(h.table.size, 0);
  });

  test('a sent request whose peer cannot stop runs on without waiters; a read joining it later gets its answer', async () => {
    const h = new Harness();
    h.cancels = false;
    const controller = new AbortController();
    const first = h.read(0, 4, { signal: controller.signal });
    h.sendAll();
    controller.abort();
    await assert.rejects(first.promise, (error: unknown) => isAbortError(error));
    const fetch = h.table.get('0+4')!;
    assert.equal(fetch.state, 'sent', 'still on the wire');
    const second = h.read(0, 4);
    h.table.deliver(fetch, bytes(5, 4));
    await second.promise;
    assert.deepEqual(second.target, bytes(5, 4));
  });

  test('a request retried goes back to queued and is sent again; one refused fails every read waiting, each with its own error', async () => {
    const h = new Harness();
    const a = h.read(0, 4);
    const b = h.read(0, 8, { chunk: 4 });
    h.sendAll();
    const fetch = h.table.get('0+4')!;
    h.table.move(fetch, 'retry');
    assert.equal(fetch.state, 'queued');
    h.table.move(fetch, 'sent');
    h.table.fail(fetch, (read) => new Error(`refused for the read at ${read.offset}+${read.lengthBytes}`));
    await assert.rejects(a.promise, /refused for the read at 0\+4/);
    await assert.rejects(b.promise, /refused for the read at 0\+8/);
    assert.equal(fetch.state, 'failed');
    // b's other request had only b: it was let go of.
    assert.deepEqual(h.dequeued, [], 'sent, so not dequeued');
    assert.deepEqual(h.cancelled, ['4+4']);
    assert.equal(h.table.size, 0);
  });

  test('failAll fails every live request and every read waiting, once each', async () => {
    const h = new Harness();
    const reads = [h.read(0, 8, { chunk: 4 }), h.read(4, 4), h.read(100, 4)];
    h.sendAll();
    const local = h.table.add({ key: 'local', offset: 200, lengthBytes: 4, state: 'local', waiters: new Set() });
    let errors = 0;
    h.table.failAll((read) => {
      errors++;
      return new SourceGoneError(read.offset, read.lengthBytes, 'gone');
    });
    assert.equal(errors, 3, 'one error per read, though one waits for two requests');
    for (const read of reads) await assert.rejects(read.promise, SourceGoneError);
    assert.equal(local.state, 'failed');
    assert.equal(h.table.size, 0);
  });

  test('a move the request table does not list is refused: nothing is delivered twice', async () => {
    const h = new Harness();
    const { promise } = h.read(0, 4);
    h.sendAll();
    const fetch = h.table.get('0+4')!;
    h.table.deliver(fetch, bytes(1, 4));
    await promise;
    assert.throws(() => h.table.deliver(fetch, bytes(2, 4)), IllegalTransitionError);
    assert.throws(() => h.table.add({ key: 'x', offset: 0, lengthBytes: 4, state: 'sent', waiters: new Set() }), /added sent, not local or queued/);
  });

  test('a read past its deadline fails with the error the source makes, and lets go of its requests; a read answered in time is not failed later', async () => {
    const h = new Harness();
    const started = performance.now();
    const late = h.read(0, 4, { deadlineMs: 80 });
    const inTime = h.read(8, 4, { deadlineMs: 80 });
    h.sendAll();
    h.table.deliver(h.table.get('8+4')!, bytes(1, 4));
    await inTime.promise;
    await assert.rejects(late.promise, /deadline: 1 request\(s\) missing/);
    const waited = performance.now() - started;
    assert.ok(waited >= 80 && waited < 5_000, `failed after ${Math.round(waited)} ms`);
    assert.deepEqual(h.cancelled, ['0+4'], 'its request, which nobody else waited for, was cancelled');
  });
});
