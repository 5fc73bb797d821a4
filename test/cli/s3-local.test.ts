// README's object-storage section as a newcomer follows it: `npm run s3-local`
// (its script, as package.json has it), the export line it prints, then the
// section's own `snapshot push` and `snapshot pull` lines, paths and port
// aside; the file comes back byte for byte, and Ctrl-C stops the store.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { writeSnapshot } from '../../src/snapshot/index.js';
import { runWith } from './helpers.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'userfault-s3-local-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The README's object-storage code block. */
function objectStorageBlock(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Restore from anywhere: object storage'));
  return /```sh\n([\s\S]*?)```/.exec(section)![1]!;
}

describe('npm run s3-local, and README\'s object-storage steps against it', { timeout: 60_000 }, () => {
  test('the store starts, the section\'s push and pull run as written, a SIGINT stops it', async () => {
    const block = objectStorageBlock();
    assert.match(block, /^npm run s3-local/m, 'the section starts the store the way this test does');
    const script = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts['s3-local']!;
    const [node, entry] = script.split(' ') as [string, string];
    assert.equal(node, 'node');
    // Port 0: a test must not depend on 9000 being free; the README's commands get the port it chose.
    const store = spawn(process.execPath, [join(ROOT, entry), '--port', '0', '--dir', join(dir, 'store')], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => store.on('exit', (code) => resolve(code)));
    try {
      let out = '';
      const printed = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the store printed no export line in 20 s: ${out}`)), 20_000);
        store.stdout!.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          if (/Ctrl-C/.test(out)) {
            clearTimeout(timer);
            resolve(out);
          }
        });
      });
      const endpoint = /^listening on (http:\/\/127\.0\.0\.1:\d+)/m.exec(printed)![1]!;
      const env: NodeJS.ProcessEnv = { ...process.env };
      for (const [, key, value] of printed.match(/^ {2}export (.*)$/m)![1]!.matchAll(/(\w+)=(\S+)/g)) env[key!] = value;

      const snapshot = join(dir, 'vm.snap');
      await writeSnapshot(snapshot, { regions: [{ imageOffset: 0, lengthBytes: 64 * 4096 }], content: new Uint8Array(64 * 4096).map((_, i) => i >> 12) });
      const lines = block.split('\n').filter((line) => /^userfault snapshot (push|pull) /.test(line));
      assert.equal(lines.length, 2, `the section pushes and pulls: ${block}`);
      for (const line of lines) {
        const args = line.replace(/\/tmp\//g, `${dir}/`).replace('http://127.0.0.1:9000', endpoint).split(/\s+/).slice(1);
        const result = runWith({ env, timeout: 30_000 }, ...args);
        assert.equal(result.status, 0, `${line}\n${result.stderr}`);
      }
      assert.deepEqual(readFileSync(join(dir, 'vm1.snap')), readFileSync(snapshot), 'pulled back byte for byte');
    } finally {
      store.kill('SIGINT');
      assert.equal(await exited, 0, 'Ctrl-C stops the store cleanly');
    }
  });
});
