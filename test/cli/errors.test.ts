// Every command fails the same way (docs/exit-codes.md): without --json one
// line `userfault: MESSAGE [CODE]` on stderr (commander's own message for a
// command line it refuses itself), with --json exactly one line
// `{"error":{"code","message","exitStatus",...}}` on stderr and nothing on
// stdout, and an exit status that is the code's in src/exit-codes.ts. Each
// case runs as a real subprocess, once in each form. A command with no case
// here fails the last test: a new command cannot drift from the shape.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Command } from 'commander';
import { exitCodeFor } from '../../src/exit-codes.js';
import { buildProgram } from '../../src/cli/program.js';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { runWith } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'userfault-errors-'));
const notSnapshot = join(dir, 'not-a-snapshot.bin');
writeFileSync(notSnapshot, Buffer.alloc(8192, 7));
const missing = join(dir, 'missing.snap');
const noVm = join(dir, 'no-vm.sock');
let busy: Server;
let busyPort = 0;

before(async () => {
  // A port something else holds, for --metrics.
  busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  busyPort = (busy.address() as { port: number }).port;
});
after(async () => {
  await new Promise<void>((resolve) => busy.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

interface FailureCase {
  /** The command, as `userfault --help` names it ("vm run", "snapshot push"). */
  command: string;
  /** Its arguments after the command's name; a function for those known only once the test runs. */
  args: () => string[];
  code: string;
  /** The message says this (the option or file it is about). */
  says: RegExp;
  /** commander refused the command line itself: its own message and hint in text, not `userfault: ... [EUSAGE]`. */
  commander?: true;
  env?: Record<string, string>;
}

const CASES: FailureCase[] = [
  { command: 'demo', args: () => ['--size', '5000'], code: 'EUSAGE', says: /--size/, commander: true },
  { command: 'demo', args: () => ['--size', '8M'], code: 'ENOINPUT', says: /TMPDIR/, env: { TMPDIR: join(dir, 'no-such-dir') } },
  { command: 'probe', args: () => ['extra'], code: 'EUSAGE', says: /too many arguments/, commander: true },
  { command: 'snapshot inspect', args: () => [missing], code: 'ENOINPUT', says: /missing\.snap does not exist/ },
  { command: 'snapshot inspect', args: () => [notSnapshot], code: 'ESNAPSHOT_FORMAT', says: /not-a-snapshot\.bin|magic/ },
  { command: 'snapshot push', args: () => [missing, 's3://snapshots/vm1'], code: 'ENOINPUT', says: /missing\.snap does not exist/ },
  { command: 'snapshot push', args: () => [notSnapshot, 'vm1'], code: 'EUSAGE', says: /s3:\/\/BUCKET\/KEY/ },
  { command: 'snapshot pull', args: () => ['http://x/y', join(dir, 'out.snap')], code: 'EUSAGE', says: /s3:\/\/BUCKET\/KEY/ },
  { command: 'snapshot push', args: () => [notSnapshot, 's3://snapshots/vm1', '--endpoint', '127.0.0.1:9000'], code: 'EUSAGE', says: /--endpoint.*http:\/\/HOST:PORT/, commander: true },
  { command: 'snapshot pull', args: () => ['s3://snapshots/vm1', join(dir, 'out.snap'), '--endpoint', 'ftp://127.0.0.1:9000'], code: 'EUSAGE', says: /--endpoint.*not ftp:/, commander: true },
  { command: 'serve', args: () => ['--socket', join(dir, 's.sock')], code: 'EUSAGE', says: /--snapshot FILE/ },
  { command: 'serve', args: () => ['--socket', join(dir, 'no', 'dir', 's.sock'), '--memory-file', notSnapshot], code: 'ECANTCREATE', says: /no\/dir\/s\.sock/ },
  { command: 'serve', args: () => ['--socket', join(dir, 's.sock'), '--memory-file', missing], code: 'ENOINPUT', says: /missing\.snap/ },
  { command: 'pages serve', args: () => ['--snapshot', missing, '--listen', '127.0.0.1:0'], code: 'ENOINPUT', says: /missing\.snap does not exist/ },
  { command: 'pages serve', args: () => ['--listen', '127.0.0.1:0'], code: 'EUSAGE', says: /--snapshot FILE/ },
  { command: 'vm run', args: () => ['--mem', '0'], code: 'EUSAGE', says: /--mem/ },
  { command: 'vm run', args: () => ['--guest', missing], code: 'EIMAGENOTFOUND', says: /missing\.snap/ },
  { command: 'vm restore', args: () => [], code: 'EUSAGE', says: /--from/ },
  { command: 'vm restore', args: () => [missing], code: 'ENOINPUT', says: /missing\.snap does not exist/ },
  { command: 'vm snapshot', args: () => ['--api-sock', noVm, '--out', join(dir, 'x.snap')], code: 'ENOVM', says: /no VM is listening/ },
  { command: 'vm receive', args: () => ['--listen', '10.0.0.1:7400'], code: 'EUSAGE', says: /--allow-remote/ },
  { command: 'vm migrate', args: () => ['--api-sock', noVm], code: 'EUSAGE', says: /--to HOST:PORT/ },
  { command: 'vm migrate', args: () => ['--api-sock', noVm, '--to', '127.0.0.1:1'], code: 'ENOVM', says: /no VM is listening/ },
  { command: 'vm status', args: () => ['--api-sock', noVm], code: 'ENOVM', says: /no VM is listening/ },
  { command: 'vm pause', args: () => ['--api-sock', noVm], code: 'ENOVM', says: /no VM is listening/ },
  { command: 'vm resume', args: () => ['--api-sock', noVm], code: 'ENOVM', says: /no VM is listening/ },
  { command: 'vm stop', args: () => ['--api-sock', noVm], code: 'ENOVM', says: /no VM is listening/ },
  { command: 'vm input', args: () => ['', '--api-sock', noVm], code: 'EUSAGE', says: /at least one byte/ },
  { command: 'vm input', args: () => ['q', '--api-sock', noVm], code: 'ENOVM', says: /no VM is listening/ },
  { command: 'dashboard', args: () => [], code: 'EUSAGE', says: /--api-sock PATH/ },
  { command: 'dashboard', args: () => ['--metrics-url', '127.0.0.1:9465'], code: 'EUSAGE', says: /--metrics-url/ },
];

/** The command as a user types it: "vm run" -> ['vm', 'run']. */
function words(command: string): string[] {
  return command.split(' ');
}

function runCase(c: FailureCase, json: boolean): ReturnType<typeof runWith> {
  return runWith({ env: { ...process.env, ...c.env }, timeout: 30_000 }, ...words(c.command), ...c.args(), ...(json ? ['--json'] : []));
}

describe('every command fails in one shape, text and --json alike, with the exit status of its code', { timeout: 120_000 }, () => {
  for (const c of CASES) {
    const name = `${c.command} ${c.args().map((a) => a.replace(dir, '$DIR')).join(' ')}`.trim();
    test(`${name}: ${c.code}`, () => {
      const status = exitCodeFor({ code: c.code });
      const text = runCase(c, false);
      assert.equal(text.status, status, `exit status of ${c.code}:\n${text.stderr}`);
      const lines = text.stderr.trimEnd().split('\n');
      if (c.commander) {
        assert.match(lines[0]!, /^error: /, text.stderr);
        assert.match(lines[0]!, c.says);
        assert.equal(lines.at(-1), '(add --help for usage)');
      } else {
        assert.equal(lines.length, 1, `one line on stderr:\n${text.stderr}`);
        assert.match(lines[0]!, new RegExp(`^userfault: .+ \\[${c.code}\\]$`));
        assert.match(lines[0]!, c.says);
      }

      const json = runCase(c, true);
      assert.equal(json.status, status, json.stderr);
      assert.equal(json.stdout, '', 'nothing on stdout');
      const jsonLines = json.stderr.trimEnd().split('\n');
      assert.equal(jsonLines.length, 1, `one line on stderr:\n${json.stderr}`);
      const parsed = JSON.parse(jsonLines[0]!) as { error: { code: string; message: string; exitStatus: number } };
      assert.deepEqual(Object.keys(parsed), ['error']);
      assert.equal(parsed.error.code, c.code);
      assert.equal(parsed.error.exitStatus, status);
      assert.match(parsed.error.message, c.says);
    });
  }

  test('a service under --log-format json (no --json) fails in the JSON shape too', () => {
    const result = runWith({}, 'pages', 'serve', '--snapshot', missing, '--listen', '127.0.0.1:0', '--log-format', 'json');
    assert.equal(result.status, 66);
    assert.equal(JSON.parse(result.stderr).error.code, 'ENOINPUT');
  });

  test('--metrics on a port another process holds names --metrics (serve, pages serve)', async () => {
    const snapshot = join(dir, 'small.snap');
    await writeSnapshot(snapshot, { regions: [{ imageOffset: 0, lengthBytes: 4 * 4096 }], content: new Uint8Array(4 * 4096).fill(1) });
    for (const command of [
      ['serve', '--socket', join(dir, 'm.sock'), '--memory-file', notSnapshot],
      ['pages', 'serve', '--snapshot', snapshot, '--listen', '127.0.0.1:0'],
    ]) {
      const result = runWith({ timeout: 30_000 }, ...command, '--metrics', `127.0.0.1:${busyPort}`);
      assert.equal(result.status, 73, result.stderr);
      assert.match(result.stderr, new RegExp(`--metrics 127\\.0\\.0\\.1:${busyPort}`));
    }
  });

  test('every command of the program has at least one failure case above', () => {
    const leaves: string[] = [];
    const walk = (command: Command, path: string[]): void => {
      if (command.commands.length === 0) leaves.push(path.join(' '));
      for (const sub of command.commands) walk(sub, [...path, sub.name()]);
    };
    walk(buildProgram(false), []);
    const covered = new Set(CASES.map((c) => c.command));
    assert.deepEqual(leaves.filter((leaf) => !covered.has(leaf)), [], 'commands without a failure case');
  });
});

describe('warnings a library emits reach the operator in the project\'s words', { timeout: 30_000 }, () => {
  const script = (json: boolean): string => `
    const { printWarningsAs } = await import(${JSON.stringify(new URL('../../src/cli/program.js', import.meta.url).href)});
    const { SourceReadError } = await import(${JSON.stringify(new URL('../../src/sources/page-source.js', import.meta.url).href)});
    printWarningsAs(${json});
    process.emitWarning(new SourceReadError(4096, 4096, 'page 1: CRC mismatch'));`;

  test('text: `userfault: warning: MESSAGE [CODE]`, no `(node:PID)` and no --trace-warnings hint', () => {
    const result = spawnSync(process.execPath, ['--input-type=module', '-e', script(false)], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(result.status, 0, result.stderr);
    assert.doesNotMatch(result.stderr, /\(node:\d+\)|trace-warnings/);
    assert.match(result.stderr, /^userfault: warning: .*CRC mismatch.* \[ESOURCE\]$/m);
  });

  test('--json: one `{"warning":{code,message}}` line', () => {
    const result = spawnSync(process.execPath, ['--input-type=module', '-e', script(true)], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(result.status, 0, result.stderr);
    const warning = (JSON.parse(result.stderr) as { warning: { code: string; message: string } }).warning;
    assert.equal(warning.code, 'ESOURCE');
    assert.match(warning.message, /CRC mismatch/);
  });
});
