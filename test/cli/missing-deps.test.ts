// The CLI run where its packages are missing (never installed, or npm ci
// removing node_modules while it runs): said in the CLI's own words and error
// shape with exit 69, not as Node's ERR_MODULE_NOT_FOUND stack.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../../', import.meta.url));

test('without its packages the CLI says which one is missing and what to run, in text and --json, exit 69', (t) => {
  // The built program and its package.json, without node_modules beside it.
  const dir = mkdtempSync(join(tmpdir(), 'uf-nodeps-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  cpSync(join(root, 'dist', 'src'), join(dir, 'dist', 'src'), { recursive: true });
  cpSync(join(root, 'package.json'), join(dir, 'package.json'));
  const cli = join(dir, 'dist', 'src', 'cli', 'main.js');
  const text = spawnSync(process.execPath, [cli, '--help'], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(text.status, 69, text.stderr);
  assert.match(text.stderr, /^userfault: the package \S+ that userfault needs is not installed here, or is being installed right now \(npm ci removes node_modules first\): run `npm ci` \(or scripts\/setup\.sh\) and let it finish \[ENODEPS\]\n$/);
  assert.doesNotMatch(text.stderr, /ERR_MODULE_NOT_FOUND|\n\s+at /, "no stack");
  const json = spawnSync(process.execPath, [cli, 'pages', 'serve', '--json'], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(json.status, 69);
  const { error } = JSON.parse(json.stderr) as { error: { code: string; exitStatus: number; message: string } };
  assert.equal(error.code, 'ENODEPS');
  assert.equal(error.exitStatus, 69);
});
