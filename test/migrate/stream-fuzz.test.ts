// The migration stream, fuzzed: a real stream is recorded (a running micro
// guest migrated through a tapping proxy), then at least 10,000 mutants of its
// pre-switchover part are fed to what the destination runs on it (the frame
// decoder, the codecs, IncomingStream) with guest RAM as a plain buffer. Every
// mutant must end in a typed error, never a crash, a hang, or a byte of
// mutated content in guest RAM. Needs /dev/kvm (for the recording).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { crc32 } from 'node:zlib';
import { UserfaultError } from '../../src/errors.js';
import { IncomingStream } from '../../src/migrate/incoming-stream.js';
import { vmMigrationKind } from '../../src/vm/vm-migration-kind.js';
import { decodeMigrationMessage, encodeMigrationMessage, isMigrationType, type MigrationMessage } from '../../src/migrate/protocol/messages.js';
import { DEFAULT_MAX_PAYLOAD_BYTES, FrameDecoder, FrameFlag, ProtocolError, decodeMessage, encodeFrame, type Frame } from '../../src/protocol/index.js';
import { controlRequest } from '../../src/vmm-host/control-api.js';
import { kvmSkipReason, spawnVmm, tempDir, vmmEvents, waitForSocket } from '../vm/helpers.js';
import { CutProxy } from './cut-proxy.js';

const skip = kvmSkipReason();
const PAGE = 4096;
const MEMORY_BYTES = 8 << 20;
const PAGES = MEMORY_BYTES / PAGE;

/** A seeded xorshift32, so every run fuzzes the same mutants of its recording. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

/** Split recorded bytes into frames (each as its own bytes), up to and including SWITCHOVER. */
function framesUntilSwitchover(bytes: Buffer): Uint8Array[] {
  const out: Uint8Array[] = [];
  const decoder = new FrameDecoder({ maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES });
  let done = false;
  decoder.push(bytes, (frame) => {
    if (done) return;
    out.push(encodeFrame(frame.type, frame.requestId, frame.payload, frame.flags));
    if (frame.type === 0x0206) done = true;
  });
  assert.ok(done, 'the recording holds a SWITCHOVER');
  return out;
}

interface Outcome {
  error: Error | undefined;
  written: Set<number>;
}

/** What the destination does with a stream before switchover: decode every frame and apply it; guest RAM is `ram`. The stream comes in pieces, as from a socket. */
function consume(pieces: readonly Uint8Array[], ram: Uint8Array): Outcome {
  const written = new Set<number>();
  const target = {
    writePages(first: number, data: Uint8Array) {
      ram.set(data, first * PAGE);
      for (let p = first; p < first + data.length / PAGE; p++) written.add(p);
    },
    zeroPage(page: number) {
      ram.fill(0, page * PAGE, (page + 1) * PAGE);
      written.add(page);
    },
  };
  const stream = new IncomingStream(PAGE, vmMigrationKind(), MEMORY_BYTES);
  const decoder = new FrameDecoder({ maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES });
  let error: Error | undefined;
  let sawHello = false;
  const apply = (frame: Frame): void => {
    const requestId = frame.requestId;
    if ((frame.flags & ~FrameFlag.crc32c) !== 0) throw new ProtocolError('EPROTO_FLAGS', 'a migration connection takes no flag but CRC32C', { field: 'flags' });
    const message = isMigrationType(frame.type) ? decodeMigrationMessage(frame, PAGE) : decodeMessage(frame);
    if (!sawHello) {
      if (message.type !== 'hello') throw new ProtocolError('EPROTO_UNEXPECTED', `${message.type} before HELLO`);
      sawHello = true;
      return;
    }
    const m = message as MigrationMessage;
    switch (m.type) {
      case 'mig-begin':
        stream.begin(m, requestId);
        return;
      case 'mig-pages':
        stream.pages(m, target);
        return;
      case 'mig-zero':
        stream.zero(m, target);
        return;
      case 'mig-round':
        stream.roundEnd(m);
        return;
      case 'mig-dirty':
        stream.dirtyList(m);
        return;
      case 'mig-switchover':
        stream.switchover(m, requestId);
        return;
      default:
        throw new ProtocolError('EPROTO_UNEXPECTED', `${message.type} in a pre-copy stream`);
    }
  };
  for (const piece of pieces) {
    if (error) break;
    const result = decoder.push(piece, (frame) => {
      if (error) return;
      try {
        apply(frame);
      } catch (caught) {
        error = caught as Error;
      }
    });
    error ??= result.error;
  }
  if (!error && decoder.bufferedBytes > 0) error = new ProtocolError('EPROTO_TRUNCATED', 'the stream ended inside a frame');
  if (!error) {
    try {
      stream.end();
    } catch (caught) {
      error = caught as Error;
    }
  }
  return { error, written };
}

const concat = (frames: readonly Uint8Array[]): Uint8Array => Buffer.concat(frames.map((f) => Buffer.from(f.buffer, f.byteOffset, f.byteLength)));

describe('the migration stream under mutation', { skip, timeout: 180_000 }, () => {
  test('10,000+ mutants of a recorded real stream: each ends in a typed error; 0 crashes, 0 hangs, 0 mutated bytes in guest RAM', async (t) => {
    // ---- record a real stream -------------------------------------------------
    const dir = tempDir(t);
    const srcSock = join(dir, 'src.sock');
    // A small stream (a 1 MiB writer dirtying 40 pages a second in an 8 MiB guest): tens of frames, ~1 MB, several rounds and a dirty list.
    const src = spawnVmm(t, ['run', '--mem', '8M', '--cmdline', 'workload=writer mem=1 rate=40 hb=10 pattern=random seed=41', '--api-sock', srcSock]);
    const dst = spawnVmm(t, ['receive', '--listen', '127.0.0.1:0']);
    await waitForSocket(srcSock);
    await src.console.waitFor(/hb 2 /);
    let url = '';
    for (let i = 0; i < 500 && !url; i++) {
      url = (vmmEvents(dst.stderr()).find((e) => e.event === 'listening') as unknown as { url: string } | undefined)?.url ?? '';
      if (!url) await new Promise((r) => setTimeout(r, 20));
    }
    const [host, port] = url.replace('tcp://', '').split(':') as [string, string];
    const proxy = await CutProxy.start({ host, port: Number(port) });
    t.after(() => proxy.close());
    // Hybrid with a tiny downtime and three rounds: pre-copy rounds, then post-copy's dirty list before SWITCHOVER.
    const done = await controlRequest(srcSock, 'PUT', '/migrate', { to: proxy.address, mode: 'hybrid', downtime_ms: 1, max_rounds: 3, wait: true });
    assert.equal(done.status, 200, JSON.stringify(done.body));
    assert.equal((done.body as { verified: boolean }).verified, true);
    dst.child.kill('SIGKILL');
    const frames = framesUntilSwitchover(Buffer.concat(proxy.recorded[0]!));
    t.diagnostic(`recorded ${frames.length} frames, ${concat(frames).length} bytes up to SWITCHOVER`);

    // Every version each page had in the real stream (CRC32), zero included: what guest RAM may legitimately hold.
    const versions = new Map<number, Set<number>>();
    const zeroCrc = crc32(new Uint8Array(PAGE));
    const ram = new Uint8Array(MEMORY_BYTES);
    const original = consume(frames, ram);
    assert.equal(original.error, undefined, `the real stream is accepted: ${original.error?.message}`);
    {
      const decoder = new FrameDecoder({ maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES });
      decoder.push(concat(frames), (frame) => {
        if (frame.type !== 0x0202) return;
        const m = decodeMigrationMessage(frame, PAGE) as Extract<MigrationMessage, { type: 'mig-pages' }>;
        for (let i = 0; i < m.pageCount; i++) {
          const set = versions.get(m.firstPage + i) ?? new Set<number>();
          set.add(crc32(m.data.subarray(i * PAGE, (i + 1) * PAGE)));
          versions.set(m.firstPage + i, set);
        }
      });
    }
    ram.fill(0);

    // ---- mutants ----------------------------------------------------------------
    const random = rng(20261201);
    const pick = (n: number): number => Math.floor(random() * n);
    const mutants: Array<{ kind: string; bytes: readonly Uint8Array[] }> = [];
    const whole = concat(frames);
    for (let i = 0; i < 4000; i++) {
      const f = pick(frames.length);
      const frame = Uint8Array.from(frames[f]!);
      const bit = pick(frame.length * 8);
      frame[bit >> 3]! ^= 1 << (bit & 7);
      mutants.push({ kind: 'bit flip', bytes: [...frames.slice(0, f), frame, ...frames.slice(f + 1)] });
    }
    let offset = 0;
    for (let f = 0; f < frames.length; f++) {
      mutants.push({ kind: 'truncated at a frame boundary', bytes: [whole.subarray(0, offset)] });
      offset += frames[f]!.length;
    }
    for (let i = 0; i < 1000; i++) mutants.push({ kind: 'truncated inside a frame', bytes: [whole.subarray(0, 1 + pick(whole.length - 1))] });
    for (let i = 0; i < 500; i++) {
      const f = 1 + pick(frames.length - 1);
      const frame = Uint8Array.from(frames[f]!);
      new DataView(frame.buffer).setUint32(8, DEFAULT_MAX_PAYLOAD_BYTES + 1 + pick(0x7fff_0000), true);
      mutants.push({ kind: 'oversized length', bytes: [...frames.slice(0, f), frame, ...frames.slice(f + 1)] });
    }
    for (let made = 0; made < 2000; ) {
      const a = pick(frames.length);
      const b = pick(frames.length);
      if (a === b || Buffer.compare(frames[a]!, frames[b]!) === 0) continue;
      const swapped = [...frames];
      [swapped[a], swapped[b]] = [swapped[b]!, swapped[a]!];
      mutants.push({ kind: 'reordered frames', bytes: swapped });
      made++;
    }
    for (let i = 0; i < 2000; i++) {
      const f = pick(frames.length);
      const at = pick(frames.length + 1);
      const copy = [...frames];
      copy.splice(at, 0, frames[f]!);
      mutants.push({ kind: 'duplicated frame', bytes: copy });
    }
    // Well-formed frames (CRC right) naming pages outside guest RAM.
    const pageFrames = frames.map((f, i) => [f, i] as const).filter(([f]) => [0x0202, 0x0203, 0x0205].includes(new DataView(f.buffer, f.byteOffset).getUint16(0, true)));
    for (let i = 0; i < 1000; i++) {
      const [frame, index] = pageFrames[pick(pageFrames.length)]!;
      const decoded = decodeMigrationMessage(new FrameDecoder({ maxPayloadBytes: DEFAULT_MAX_PAYLOAD_BYTES }).push(frame).frames[0]!, PAGE) as Extract<MigrationMessage, { firstPage: number; pageCount: number }>;
      // Past the end, or overlapping it: the run ends beyond the last page.
      const firstPage = Math.max(PAGES - decoded.pageCount + 1, PAGES - pick(decoded.pageCount) + pick(1 << 20));
      const hostile = { ...decoded, firstPage } as MigrationMessage;
      mutants.push({ kind: 'pages outside guest RAM', bytes: [...frames.slice(0, index), encodeMigrationMessage(hostile, 0), ...frames.slice(index + 1)] });
    }
    assert.ok(mutants.length >= 10_000, `${mutants.length} mutants`);

    // ---- run them -------------------------------------------------------------
    const counts = new Map<string, { total: number; typed: number; crashes: number; accepted: number }>();
    let crashes = 0;
    let accepted = 0;
    let corruptPages = 0;
    let slowestMs = 0;
    for (const mutant of mutants) {
      const started = performance.now();
      const outcome = consume(mutant.bytes, ram);
      slowestMs = Math.max(slowestMs, performance.now() - started);
      const c = counts.get(mutant.kind) ?? { total: 0, typed: 0, crashes: 0, accepted: 0 };
      c.total++;
      if (outcome.error === undefined) {
        c.accepted++;
        accepted++;
      } else if (outcome.error instanceof UserfaultError) c.typed++;
      else {
        c.crashes++;
        crashes++;
        t.diagnostic(`crash (${mutant.kind}): ${outcome.error.stack}`);
      }
      counts.set(mutant.kind, c);
      for (const page of outcome.written) {
        const crc = crc32(ram.subarray(page * PAGE, (page + 1) * PAGE));
        if (crc !== zeroCrc && !versions.get(page)?.has(crc)) corruptPages++;
        ram.fill(0, page * PAGE, (page + 1) * PAGE);
      }
    }
    for (const [kind, c] of counts) t.diagnostic(`${kind}: ${c.total} mutants, ${c.typed} typed errors, ${c.crashes} crashes, ${c.accepted} accepted`);
    t.diagnostic(`${mutants.length} mutants; slowest ${slowestMs.toFixed(1)} ms`);
    assert.equal(crashes, 0, 'no mutant made anything but a typed error');
    assert.equal(accepted, 0, 'every mutant was refused');
    assert.equal(corruptPages, 0, 'no mutated content reached guest RAM');
    assert.ok(slowestMs < 1000, `no mutant took long (the slowest: ${slowestMs} ms)`);
  });
});
