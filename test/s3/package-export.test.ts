// S3Source and the store's commands are reachable from the package, as
// `userfault/s3` (package.json "exports"), and the root entry point does not
// load the AWS SDK: a program that never reads a store does not pay for it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** Every file the root entry point imports statically (export ... from included), transitively, from dist. */
function staticImports(entry: string): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string): void => {
    if (files.has(file)) return;
    files.add(file);
    const text = readFileSync(file, 'utf8');
    for (const [, specifier] of text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+'([^']+)'/gms)) {
      if (specifier!.startsWith('.')) visit(resolve(dirname(file), specifier!));
      else packages.add(specifier!);
    }
  };
  visit(entry);
  return { files, packages };
}

describe('the package\'s entry points', () => {
  test('userfault/s3 exports S3Source, pushSnapshot and pullSnapshot', () => {
    const script = "const m = await import('userfault/s3'); console.log(JSON.stringify([typeof m.S3Source, typeof m.pushSnapshot, typeof m.pullSnapshot, typeof m.parseS3Url]));";
    const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 20_000 });
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout), ['function', 'function', 'function', 'function']);
  });

  test('import \'userfault\' loads no AWS SDK module', () => {
    const { files, packages } = staticImports(join(ROOT, 'dist/src/index.js'));
    assert.ok(files.size > 20, `the walk found the entry point's imports (${files.size})`);
    assert.deepEqual([...packages].filter((p) => p.startsWith('@aws-sdk')), []);
    assert.ok(![...files].some((f) => f.endsWith('s3/s3-object.js')), 'the store\'s client is not among them');
  });
});
