// The migrate bench section: its pure parts (QMP lines, QEMU's demand trace,
// the heartbeat across a move, the options), and a tiny real run against QEMU
// when QEMU is installed (the test never installs it: CI has none).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OPT_IN_SECTIONS, SECTION_NAMES, parseBenchArgs } from '../../bench/args.js';
import { TimedConsole, checkGuestVerify, heartbeatAcrossMove } from '../../bench/migrate/heartbeat.js';
import { guestCmdline, regionMiBFor } from '../../bench/migrate/workload.js';
import { qemuVersion } from '../../bench/qemu/install.js';
import { parseDemandTrace } from '../../bench/qemu/postcopy-trace.js';
import { guestStatusFromExit, qemuArgs } from '../../bench/qemu/qemu-args.js';
import { LineSplitter, QmpProtocolError, decodeQmpLine, encodeQmpCommand } from '../../bench/qemu/qmp-protocol.js';
import { runBench } from '../../bench/run.js';
import { ensureBuiltinGuest } from '../../src/vm/boot/builtin-guest.js';

describe('QMP lines', () => {
  test('the greeting, a return, an error and an event decode into their kinds', () => {
    const greeting = decodeQmpLine('{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}');
    assert.deepEqual(greeting, { type: 'greeting', version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'Debian 1:7.2+dfsg-7+deb12u18+b3' } });
    assert.deepEqual(decodeQmpLine('{"return": {}, "id": 3}'), { type: 'return', id: 3, value: {} });
    assert.deepEqual(decodeQmpLine('{"id": 4, "error": {"class": "GenericError", "desc": "Parameter downtime-limit expects ..."}}'), {
      type: 'error', id: 4, errorClass: 'GenericError', description: 'Parameter downtime-limit expects ...',
    });
    assert.deepEqual(decodeQmpLine('{"timestamp": {"seconds": 1796168752, "microseconds": 166235}, "event": "MIGRATION_PASS", "data": {"pass": 2}}'), {
      type: 'event', name: 'MIGRATION_PASS', data: { pass: 2 }, timestampMicros: 1796168752166235,
    });
  });

  test('a line that is not QMP is refused with the line', () => {
    assert.throws(() => decodeQmpLine('hb 3 dirtied=1'), QmpProtocolError);
    assert.throws(() => decodeQmpLine('[1]'), /not an object/);
    assert.throws(() => decodeQmpLine('{"x": 1}'), /neither/);
  });

  test('a command is one line with its id; lines split anywhere join again', () => {
    assert.equal(encodeQmpCommand(7, 'migrate', { uri: 'tcp:127.0.0.1:1' }), '{"execute":"migrate","arguments":{"uri":"tcp:127.0.0.1:1"},"id":7}\n');
    assert.equal(encodeQmpCommand(8, 'query-migrate'), '{"execute":"query-migrate","id":8}\n');
    const text = '{"return": {}, "id": 1}\r\n{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const splitter = new LineSplitter();
      const lines = [...splitter.push(text.slice(0, cut)), ...splitter.push(text.slice(cut))];
      assert.deepEqual(lines.map((l) => decodeQmpLine(l).type), ['return', 'event'], `cut at ${cut}`);
    }
  });
});

describe("QEMU's demand trace", () => {
  test('each demanded page\'s latency is its placement less its request, per host address', () => {
    const trace = [
      '11464@1796168753.892201:postcopy_page_req_add new page req 0x7f251a20e000 total 1',
      '11464@1796168753.892301:postcopy_page_req_add new page req 0x7f251a20f000 total 2',
      '11465@1796168753.920618:postcopy_page_req_del resolved page req 0x7f251a20e000 total 1',
      '11465@1796168753.921000:postcopy_page_req_sync sync page req 0x7f251a20f000',
      '11465@1796168754.000301:postcopy_page_req_del resolved page req 0x7f251a20f000 total 0',
      '11465@1796168754.000400:postcopy_page_req_del resolved page req 0x7f2500000000 total 0',
      '11464@1796168754.100000:postcopy_page_req_add new page req 0x7f2500001000 total 1',
      'qemu-system-x86_64: warning: something else',
    ].join('\n');
    const parsed = parseDemandTrace(trace);
    assert.deepEqual(parsed.latenciesMicros, [28417, 108000]);
    assert.equal(parsed.unresolved, 1, 'the last request was never placed');
  });
});

/** A console with these lines, each arriving at its time (ms). */
function consoleOf(lines: [string, number][], partial = ''): TimedConsole {
  const c = new TimedConsole();
  for (const [text, at] of lines) c.append(`${text}\n`, at);
  if (partial) c.append(partial, lines.at(-1)?.[1] ?? 0);
  return c;
}

describe('the heartbeat across a move', () => {
  test('one sequence across both consoles: the gap is from the last beat before to the first after', () => {
    const source = consoleOf([['micro: boot workload=writer mem=22 pages=5632', 0], ['hb 1 dirtied=1 ticks=1', 10], ['hb 2 dirtied=2 ticks=2', 20], ['hb 3 dirtied=3 ticks=3', 30], ['hb 4 dirtied=4 ticks=4', 40]]);
    const destination = consoleOf([['hb 5 dirtied=5 ticks=5', 95], ['hb 6 dirtied=6 ticks=6', 105], ['hb 7 dirtied=7 ticks=7', 160]]);
    const across = heartbeatAcrossMove(source, destination, 25);
    assert.deepEqual(across, { beforeCount: 4, afterCount: 3, lastBefore: 4, firstAfter: 5, lastBeforeAtMs: 15, firstAfterAtMs: 70, gapMs: 55, longestIntervalMs: 55, periodMs: 10 });
  });

  test('a line the source began is finished on the destination', () => {
    const source = consoleOf([['hb 1 dirtied=1 ticks=1', 10]], 'hb 2 dir');
    const destination = consoleOf([['tied=2 ticks=2', 50], ['hb 3 dirtied=3 ticks=3', 60]]);
    const across = heartbeatAcrossMove(source, destination, 0);
    assert.deepEqual([across.lastBefore, across.firstAfter, across.gapMs], [1, 2, 40]);
  });

  test('a repeated or missing beat is an error that says where', () => {
    const source = consoleOf([['hb 1 x', 10], ['hb 2 x', 20]]);
    assert.throws(() => heartbeatAcrossMove(source, consoleOf([['hb 2 x', 30]]), 0), /2 is followed by 2 across the move/);
    assert.throws(() => heartbeatAcrossMove(source, consoleOf([['hb 3 x', 30], ['hb 5 x', 40]]), 0), /3 is followed by 5 on the destination/);
    assert.throws(() => heartbeatAcrossMove(source, consoleOf([]), 0), /both sides/);
  });

  test("the guest's own verify must be clean and cover every page", () => {
    checkGuestVerify(consoleOf([['verify pages=5632 bad=0', 1], ['done status=0', 2]]), 5632, 'g');
    assert.throws(() => checkGuestVerify(consoleOf([['bad page=7 want=3 got=2', 1], ['verify pages=5632 bad=1', 2]]), 5632, 'g'), /not clean.*bad page=7/);
    assert.throws(() => checkGuestVerify(consoleOf([['verify pages=100 bad=0', 1]]), 5632, 'g'), /not clean/);
    assert.throws(() => checkGuestVerify(consoleOf([['done status=0', 1]]), 5632, 'g'), /no verify line/);
  });
});

describe('the migrate section\'s options and command lines', () => {
  test('migrate runs only when named, with the issue\'s 512 MiB by default', () => {
    assert.ok(!(SECTION_NAMES as readonly string[]).includes('migrate'));
    assert.deepEqual([...OPT_IN_SECTIONS], ['migrate']);
    const options = parseBenchArgs(['--sections', 'migrate']);
    assert.deepEqual(options.sections, ['migrate']);
    assert.deepEqual(options.migrate, { memoryBytes: 512 << 20, ratePagesPerSecond: 16384, patterns: ['sequential', 'random'], switchovers: ['first-pass', 'immediate'], qemuAccel: 'auto' });
    const small = parseBenchArgs(['--migrate-mem', '32M', '--migrate-rate', '2000', '--migrate-patterns', 'random', '--migrate-switchover', 'immediate', '--qemu-accel', 'tcg']).migrate;
    assert.deepEqual(small, { memoryBytes: 32 << 20, ratePagesPerSecond: 2000, patterns: ['random'], switchovers: ['immediate'], qemuAccel: 'tcg' });
    assert.throws(() => parseBenchArgs(['--migrate-patterns', 'zigzag']), /unknown zigzag/);
    assert.throws(() => parseBenchArgs(['--migrate-rate', '0']), /positive/);
    assert.throws(() => parseBenchArgs(['--qemu-accel', 'hvf']), /auto, kvm or tcg/);
  });

  test('both VMMs get the same guest command line; QEMU exits with the guest\'s status', () => {
    assert.equal(regionMiBFor(512 << 20), 502);
    assert.equal(guestCmdline({ memoryBytes: 512 << 20, regionMiB: 502, pattern: 'sequential', ratePagesPerSecond: 16384, hz: 100, hbTicks: 1, seed: 1 }), 'workload=writer mem=502 rate=16384 pattern=seq seed=1 hz=100 hb=1');
    const args = qemuArgs({ accel: 'kvm', memoryBytes: 512 << 20, kernel: '/g/micro.elf', append: 'workload=writer', qmpSocket: '/t/q.sock', incoming: true });
    assert.deepEqual(args.slice(args.indexOf('-kernel'), args.indexOf('-kernel') + 4), ['-kernel', '/g/micro.elf', '-append', 'workload=writer']);
    assert.ok(args.join(' ').includes('-m 512M') && args.join(' ').includes('-incoming defer') && args.join(' ').includes('isa-debug-exit,iobase=0xf4'));
    assert.deepEqual([guestStatusFromExit(1), guestStatusFromExit(3), guestStatusFromExit(0), guestStatusFromExit(null)], [0, 1, undefined, undefined]);
  });
});

function smokeSkipReason(): string | undefined {
  if (qemuVersion() === undefined) return 'QEMU is not installed (the bench installs it; this test does not: apt-get install -y qemu-system-x86)';
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return '/dev/kvm is not available';
  }
  const guest = ensureBuiltinGuest();
  return guest.path === undefined ? guest.reason : undefined;
}

describe('migrate smoke run against QEMU', { skip: smokeSkipReason() }, () => {
  test('a 32 MiB guest migrates once each way, verified, and the table and targets come out', { timeout: 240_000 }, async () => {
    const outDir = mkdtempSync(join(tmpdir(), 'uf-bench-migrate-'));
    try {
      const options = parseBenchArgs(['--sections', 'migrate', '--rounds', '1', '--migrate-mem', '32M', '--migrate-patterns', 'random', '--migrate-switchover', 'immediate', '--out', outDir]);
      const outcome = await runBench(options, () => {});
      assert.deepEqual(outcome.sections.map((s) => s.name), ['migrate']);
      assert.match(outcome.text, /6\. Live migration, pure post-copy/);
      assert.match(outcome.text, /random +ours +\d/);
      assert.match(outcome.text, /random +QEMU 7\.\d+\.\d+ \((kvm|tcg)\)/);
      assert.ok(outcome.targets.some((t) => t.name.includes('total time')) && outcome.targets.some((t) => t.name.includes('heartbeat gap')));
      const json = JSON.parse(readFileSync(outcome.jsonPath, 'utf8')) as { sections: { migrate: { runs: Record<string, { verifiedGuestPages: number; demandFaults: number }[]> } } };
      const runs = json.sections.migrate.runs;
      assert.deepEqual(Object.keys(runs).sort(), ['immediate/random/ours', 'immediate/random/qemu']);
      for (const list of Object.values(runs)) {
        assert.equal(list.length, 1);
        assert.equal(list[0]!.verifiedGuestPages, 22 * 256, 'the guest verified every page of its region after the move');
      }
    } finally {
      rmSync(outDir, { recursive: true, force: true });
    }
  });
});
