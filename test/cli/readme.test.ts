// The README stays true: its synopsis has every option the CLI defines (and no
// other), its library example is examples/library.ts verbatim, its set-up
// commands are what CI runs, and its claims match what exists.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { buildProgram, DESCRIPTION } from '../../src/cli/program.js';
import { ExitCode } from '../../src/exit-codes.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const readme = readFileSync(`${root}README.md`, 'utf8');

/** The fenced block that follows `heading` in the README. */
function blockAfter(heading: string): string {
  const at = readme.indexOf(heading);
  assert.ok(at >= 0, `the README has "${heading}"`);
  const match = /```[a-z]*\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(match, `a code block after "${heading}"`);
  return match[1]!;
}

/** Every leaf command ("vm restore") and the long names of its options, --help left out. */
function definedOptions(): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  const walk = (command: Command, prefix: string): void => {
    for (const sub of command.commands) {
      const name = `${prefix} ${sub.name()}`.trim();
      if (sub.commands.length > 0) walk(sub, name);
      else out.set(name, new Set(sub.options.map((o) => o.long!).filter((long) => long !== '--help')));
    }
  };
  walk(buildProgram(false), '');
  return out;
}

/** The README synopsis: each command (alternatives "a|b|c" expanded) and the options its lines name. */
function synopsisOptions(): Map<string, Set<string>> {
  const entries: string[] = [];
  for (const line of blockAfter('## The command line').split('\n')) {
    if (line.startsWith('userfault ')) entries.push(line);
    else if (/^\s+\S/.test(line)) entries[entries.length - 1] += ` ${line.trim()}`;
  }
  const out = new Map<string, Set<string>>();
  for (const entry of entries) {
    const words = entry.split(/\s+/).slice(1);
    const commandWords = words.slice(0, words.findIndex((w) => !/^[a-z|]+$/.test(w)) >>> 0);
    const options = new Set(entry.match(/--[a-z][a-z-]*/g) ?? []);
    const [first, ...rest] = commandWords;
    const last = rest.length > 0 ? rest : [first!];
    const parent = rest.length > 0 ? `${first} ` : '';
    for (const alternative of last.at(-1)!.split('|')) out.set(`${parent}${[...last.slice(0, -1), alternative].join(' ')}`.trim(), options);
  }
  return out;
}

describe('the README', () => {
  test('the synopsis lists every command with exactly the options the CLI defines', () => {
    const defined = definedOptions();
    const documented = synopsisOptions();
    assert.deepEqual([...documented.keys()].sort(), [...defined.keys()].sort(), 'the same commands');
    for (const [command, options] of defined) {
      assert.deepEqual([...documented.get(command)!].sort(), [...options].sort(), `userfault ${command}`);
    }
  });

  test('the library example is examples/library.ts, verbatim', () => {
    assert.equal(blockAfter('## The library, one example each'), readFileSync(`${root}examples/library.ts`, 'utf8'));
  });

  test('CI runs the README\'s set-up and test commands', () => {
    const commands = blockAfter('## Two commands');
    assert.match(commands, /^bash scripts\/setup\.sh && npm test /m);
    const ci = readFileSync(`${root}.ci/run`, 'utf8').split('\n').filter((line) => line !== '' && !line.startsWith('#'));
    assert.deepEqual(ci.slice(-2), ['bash scripts/setup.sh', 'npm test']);
  });

  test('every exit status is documented in docs/exit-codes.md, which the README links', () => {
    const doc = readFileSync(`${root}docs/exit-codes.md`, 'utf8');
    for (const [name, status] of Object.entries(ExitCode)) assert.match(doc, new RegExp(`^\\| ${status} \\| ${name} \\|`, 'm'), `${status} ${name}`);
    assert.match(readme, /\(docs\/exit-codes\.md\)/);
  });

  test('nothing is called planned: the introduction, package.json and --help name only what is here, object storage and the dashboard included', () => {
    const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { description: string };
    const intro = readme.slice(0, readme.indexOf('## Two commands'));
    for (const [where, text] of [['the README\'s introduction', intro], ['package.json', pkg.description], ['--help', DESCRIPTION]] as const) {
      const sentences = text.replace(/\s+/g, ' ').split(/(?<=\.) /);
      assert.doesNotMatch(text, /planned|not (yet )?here/i, where);
      assert.ok(sentences.some((s) => /S3/.test(s)), `${where} names S3`);
      assert.ok(sentences.some((s) => /dashboard/i.test(s)), `${where} names the dashboard`);
    }
  });
});
