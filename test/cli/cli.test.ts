// The README's commands, run as a user would: results, exit statuses
// (docs/exit-codes.md) and --json output, errors included.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fillPattern } from '../../src/demo/pattern.js';
import { ExitCode } from '../../src/exit-codes.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { jsonError, run, runWith } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'userfault-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function smallSnapshot(name: string, pages = 16): Promise<string> {
  const path = join(dir, name);
  const image = new Uint8Array(pages * 4096);
  fillPattern(image, 0);
  await writeSnapshot(path, { regions: [{ imageOffset: 0, lengthBytes: image.length }], content: image });
  return path;
}

describe('userfault demo', () => {
  test('restores a snapshot lazily and finds every page intact; --json numbers are rounded to what they mean', () => {
    const result = run('demo', '--size', '8M', '--pattern', 'random', '--json');
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stderr, '');
    const report = JSON.parse(result.stdout) as Record<string, number> & { badPages: number[] };
    assert.deepEqual(report.badPages, []);
    assert.ok(report.faults! > 0);
    assert.equal(report.pagesCopied! + report.zeroPages!, 2048);
    for (const key of ['writeMs', 'restoreMs', 'touchMs']) assert.ok(Number.isInteger(report[key]! * 10), `${key} ${report[key]} to 0.1 ms`);
    for (const key of ['p50Micros', 'p90Micros', 'p99Micros', 'maxMicros']) assert.ok(Number.isInteger(report[key]), `${key} ${report[key]} whole µs`);
    assert.ok(report.p50Micros! <= report.p90Micros! && report.p90Micros! <= report.p99Micros! && report.p99Micros! <= report.maxMicros!);
  });

  test('--size is refused naming the option when it is zero, not a page multiple, or not a size', () => {
    for (const [size, why] of [['0', /at least 4096 bytes/], ['5000', /multiple of the 4096-byte page/], ['12Q', /"12Q" is not a size/]] as const) {
      const result = run('demo', '--size', size);
      assert.equal(result.status, ExitCode.USAGE, result.stderr);
      assert.match(result.stderr, new RegExp(`option '--size <bytes>' argument '${size}' is invalid`));
      assert.match(result.stderr, why);
      assert.doesNotMatch(result.stderr, /region|commander\./);
      assert.equal(result.stderr.match(/is invalid/g)?.length, 1, 'said once');
    }
  });

  test('under --json a refused option is one JSON error object on stderr, nothing on stdout', () => {
    const result = run('demo', '--size', '0', '--json');
    assert.equal(result.status, ExitCode.USAGE);
    assert.equal(result.stdout, '');
    const error = jsonError(result.stderr);
    assert.equal(error.code, 'EUSAGE');
    assert.equal(error.exitStatus, 64);
    assert.match(error.message, /--size/);
  });
});

describe('usage errors', () => {
  test('a --metrics-url that is not an http:// URL (no scheme, another scheme) is a usage error (64) naming the option', () => {
    for (const url of ['127.0.0.1:9465', 'https://127.0.0.1:9465/metrics']) {
      const result = run('dashboard', '--metrics-url', url, '--listen', '127.0.0.1:0');
      assert.equal(result.status, ExitCode.USAGE, `${url}: ${result.stderr}`);
      assert.match(result.stderr, /--metrics-url .*http:\/\/HOST:PORT\/metrics/);
    }
  });

  test('a missing input is named alike by every command: pages serve --snapshot of a missing file says ENOINPUT (66) as snapshot inspect does', () => {
    const missing = join(tmpdir(), 'userfault-no-such.snap');
    for (const args of [['pages', 'serve', '--snapshot', missing, '--listen', '127.0.0.1:0'], ['snapshot', 'inspect', missing]]) {
      const result = run(...args);
      assert.equal(result.status, ExitCode.NO_INPUT, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, /userfault-no-such\.snap does not exist \[ENOINPUT\]/);
    }
  });

  test('demo with TMPDIR naming a missing directory says so, naming TMPDIR, not a bare statfs error', () => {
    const result = runWith({ env: { ...process.env, TMPDIR: '/nonexistent-userfault-tmp' } }, 'demo', '--size', '1M');
    assert.equal(result.status, ExitCode.NO_INPUT, result.stderr);
    assert.match(result.stderr, /\/nonexistent-userfault-tmp \(TMPDIR\), which does not exist/);
    assert.doesNotMatch(result.stderr, /statfs/);
  });

  test('vm migrate with neither --to, --resume nor --abandon is a usage error naming them, not a crash', () => {
    const result = run('vm', 'migrate', '--api-sock', '/nonexistent/x.sock');
    assert.equal(result.status, ExitCode.USAGE, result.stderr);
    assert.match(result.stderr, /--to HOST:PORT \(or --resume or --abandon a paused migration\)/);
    assert.doesNotMatch(result.stderr, /Cannot read properties/);
  });

  test('an unknown command or option exits 64 with commander\'s message, once, and no code in brackets', () => {
    for (const args of [['bogus'], ['demo', '--bogus'], ['snapshot', 'inspect'], ['probe', 'extra', 'args']]) {
      const result = run(...args);
      assert.equal(result.status, ExitCode.USAGE, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, /^error: /);
      assert.equal(result.stderr.match(/^error: /gm)?.length, 1);
      assert.doesNotMatch(result.stderr, /\[commander\./);
    }
    const json = run('demo', '--bogus', '--json');
    assert.equal(json.status, ExitCode.USAGE);
    assert.deepEqual(jsonError(json.stderr), { code: 'EUSAGE', message: 'unknown option \'--bogus\'', exitStatus: 64 });
  });

  test('--help and --version exit 0', () => {
    assert.equal(run('--help').status, 0);
    assert.equal(run('demo', '--help').status, 0);
    assert.equal(run('--version').status, 0);
  });
});

describe('userfault probe', () => {
  test('lists the features, the API ioctls and the ioctls of a registered range per memory type, /dev/userfaultfd, the sysctl and KVM', () => {
    const result = run('probe', '--json');
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout) as {
      userfaultfd: { available: boolean; features: string[]; apiIoctls: string[]; ranges: Array<{ memory: string; modes: string[]; ioctls?: string[] }>; device: { path: string; present: boolean }; unprivilegedUserfaultfd: number | null };
      kvm: { path: string; present: boolean; apiVersion?: number };
    };
    const u = report.userfaultfd;
    assert.equal(u.available, true);
    assert.ok(u.features.includes('EVENT_REMOVE'));
    assert.ok(u.apiIoctls.includes('REGISTER'));
    const anonMissing = u.ranges.find((r) => r.memory === 'anonymous' && r.modes.join() === 'MISSING');
    assert.ok(anonMissing?.ioctls?.includes('COPY') && anonMissing.ioctls.includes('ZEROPAGE'), JSON.stringify(anonMissing));
    const shmemMinor = u.ranges.find((r) => r.memory === 'shmem' && r.modes.join() === 'MINOR');
    if (u.features.includes('MINOR_SHMEM')) assert.ok(shmemMinor?.ioctls?.includes('CONTINUE'), JSON.stringify(shmemMinor));
    assert.equal(u.device.path, '/dev/userfaultfd');
    assert.equal(typeof u.device.present, 'boolean');
    assert.equal(u.unprivilegedUserfaultfd, Number(readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8')));
    assert.equal(report.kvm.path, '/dev/kvm');
    if (report.kvm.present && report.kvm.apiVersion !== undefined) assert.equal(report.kvm.apiVersion, 12);

    const text = run('probe');
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /^ {4}anonymous MISSING +WAKE COPY ZEROPAGE/m);
    assert.match(text.stdout, /vm\.unprivileged_userfaultfd = \d/);
    assert.match(text.stdout, /^kvm: /m);
  });
});

describe('userfault snapshot inspect: exit statuses', () => {
  test('a good snapshot exits 0; a corrupt page found by the page check exits 1 with the report naming it', async () => {
    const path = await smallSnapshot('small.snap');
    const good = run('snapshot', 'inspect', path);
    assert.equal(good.status, 0, good.stderr);
    assert.match(good.stdout, /16 checked, all ok/);

    const bytes = readFileSync(path);
    bytes[bytes.length - 100]! ^= 0xff; // inside the last stored page
    writeFileSync(path, bytes);
    const bad = run('snapshot', 'inspect', path, '--json');
    assert.equal(bad.status, ExitCode.CHECK_FAILED);
    const report = JSON.parse(bad.stdout) as { ok: boolean; pages: { corruptPageCount: number; corruptPages: Array<{ pageIndex: number; expectedCrc32: string; actualCrc32: string }> } };
    assert.equal(report.ok, false);
    assert.equal(report.pages.corruptPageCount, 1);
    assert.equal(report.pages.corruptPages[0]!.pageIndex, 15);
    assert.match(report.pages.corruptPages[0]!.expectedCrc32, /^0x[0-9a-f]{8}$/, 'a checksum in hex');
    assert.notEqual(report.pages.corruptPages[0]!.actualCrc32, report.pages.corruptPages[0]!.expectedCrc32);
    assert.equal(run('snapshot', 'inspect', path, '--no-verify').status, 0, 'not checked, nothing found');
  });

  test('a truncated snapshot exits 65 with a message naming what is cut short; under --json one JSON error', async () => {
    const path = await smallSnapshot('truncated.snap', 8);
    writeFileSync(path, readFileSync(path).subarray(0, 5000));
    const result = run('snapshot', 'inspect', path);
    assert.equal(result.status, ExitCode.DATA);
    assert.match(result.stderr, /^userfault: snapshot .* is truncated: .* \[ESNAPSHOT_TRUNCATED\]$/m);
    assert.equal(result.stderr.match(/ESNAPSHOT_TRUNCATED/g)?.length, 1, 'the code once');

    const json = run('snapshot', 'inspect', path, '--json');
    assert.equal(json.status, ExitCode.DATA);
    assert.equal(json.stdout, '');
    const error = jsonError(json.stderr);
    assert.equal(error.code, 'ESNAPSHOT_TRUNCATED');
    assert.equal(error.exitStatus, 65);
    assert.equal(error.structure, 'file');
    assert.equal(typeof error.expectedBytes, 'number');
    assert.equal(error.actualBytes, 5000);
  });

  test('a file that is not a snapshot exits 65; a missing file or a directory 66', async () => {
    const junk = join(dir, 'junk.snap');
    writeFileSync(junk, Buffer.alloc(8192, 'x'));
    const notSnapshot = run('snapshot', 'inspect', junk);
    assert.equal(notSnapshot.status, ExitCode.DATA, notSnapshot.stderr);
    assert.match(notSnapshot.stderr, /magic/);

    const missing = run('snapshot', 'inspect', join(dir, 'nope.snap'), '--json');
    assert.equal(missing.status, ExitCode.NO_INPUT);
    const error = jsonError(missing.stderr);
    assert.equal(error.code, 'ENOINPUT');
    assert.equal(error.path, join(dir, 'nope.snap'));
    assert.match(error.message, /nope\.snap does not exist/);

    const directory = run('snapshot', 'inspect', dir);
    assert.equal(directory.status, ExitCode.NO_INPUT);
    assert.match(directory.stderr, /is a directory \[ENOINPUT\]/);
  });
});
