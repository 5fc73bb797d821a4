// The layering of src/ (docs/architecture.md), checked: every import, type-only
// and dynamic ones included, runs down the layers or stays in its own folder.
// The import graph is read with the TypeScript compiler's parser, so an
// `import type`, an `export ... from`, an `import('...')` call and an
// `import('...').Type` all count: a type-only arrow still couples the two
// folders (the importer cannot be read, or compiled, without the imported).
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = fileURLToPath(new URL('../../', import.meta.url));
const srcDir = join(root, 'src');

/**
 * The layers, bottom first: a unit (a folder of src/, or a file at its root)
 * may import its own files and any unit of a layer below its own; never one
 * above (an upward arrow), never another unit of its own layer (an arrow
 * across). docs/architecture.md draws the same table and says why.
 */
export const LAYERS: ReadonlyArray<{ readonly units: readonly string[]; readonly why: string }> = [
  { units: ['errors.ts', 'native.ts', 'format-bytes.ts'], why: 'the error base, the native addon\'s typed surface and its constants, byte counts for people' },
  { units: ['native-kvm.ts', 'errno.ts', 'exit-codes.ts', 'transition-table.ts'], why: 'the addon\'s KVM surface and errno tables (on native.ts); the exit status of every error code, the state machines\' tables (on errors.ts)' },
  { units: ['uffd', 'stats', 'net', 'checksum'], why: 'userfaultfd, leaf statistics (the latency histogram), sockets and addresses, CRC32C' },
  { units: ['mem'], why: 'mappings (they register with userfaultfd)' },
  { units: ['protocol', 'snapshot'], why: 'the page protocol\'s codec, the snapshot format' },
  { units: ['sources', 'transport'], why: 'the PageSource contract and the local sources; the framed connection every network role speaks over (on protocol\'s frames and net\'s sockets)' },
  { units: ['pager'], why: 'faults served from a PageSource' },
  { units: ['pages', 's3'], why: 'sources over the network: the page server and its client (the remote source); the object store (the S3 source)' },
  { units: ['source-url'], why: 'a source opened by its URL (tcp://, s3://): the one dispatch the CLI, the VMM process and lazy memory share' },
  { units: ['lazy', 'handler', 'vm'], why: 'users of a pager: lazy memory in this process, the handler service for other processes, the VM' },
  { units: ['migrate'], why: 'moving a running VM' },
  { units: ['metrics'], why: 'the catalog and the reporters, which import what they report on' },
  { units: ['vmm-host', 'dashboard'], why: 'the VMM process and its control API; the dashboard' },
  { units: ['demo'], why: 'the built-in demo job' },
  { units: ['cli'], why: 'the command line' },
  { units: ['index.ts'], why: 'the package\'s entry point: re-exports' },
];

export interface ImportEdge {
  /** Repository-relative paths, e.g. src/pager/pager.ts. */
  readonly from: string;
  readonly to: string;
  readonly kind: 'import' | 'import type' | 'export from' | 'dynamic import()' | 'import() type';
}

/** Every relative import of one source file, resolved to a .ts path. */
export function importsOf(file: string, text: string): ImportEdge[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true);
  const edges: ImportEdge[] = [];
  const add = (specifier: string, kind: ImportEdge['kind']): void => {
    if (!specifier.startsWith('.')) return; // node: builtins and packages
    const target = resolve(dirname(join(root, file)), specifier).replace(/\.js$/, '.ts');
    edges.push({ from: file, to: relative(root, target), kind });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      add(node.moduleSpecifier.text, node.importClause?.isTypeOnly ? 'import type' : 'import');
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      add(node.moduleSpecifier.text, 'export from');
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const [argument] = node.arguments;
      if (argument && ts.isStringLiteralLike(argument)) add(argument.text, 'dynamic import()');
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      add(node.argument.literal.text, 'import() type');
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return edges;
}

/** The unit a src/ path belongs to: its top folder, or the file itself at src/'s root. */
export function unitOf(path: string): string {
  const [top, unit] = path.split('/');
  assert.equal(top, 'src', `${path} is not under src/`);
  return unit!;
}

function layerOf(unit: string): number {
  return LAYERS.findIndex((layer) => layer.units.includes(unit));
}

/** Why an edge breaks the layering, or undefined when it runs down or stays home. */
export function violationOf(edge: ImportEdge): string | undefined {
  const [fromUnit, toUnit] = [unitOf(edge.from), unitOf(edge.to)];
  if (fromUnit === toUnit) return undefined;
  const [fromLayer, toLayer] = [layerOf(fromUnit), layerOf(toUnit)];
  if (fromLayer < 0 || toLayer < 0) return `${edge.from} -> ${edge.to}: ${fromLayer < 0 ? fromUnit : toUnit} has no layer (add it to LAYERS and docs/architecture.md)`;
  if (fromLayer > toLayer) return undefined;
  const rule = fromLayer === toLayer
    ? `across: ${fromUnit} and ${toUnit} share a layer (${LAYERS[fromLayer]!.units.join(', ')}) and may not import each other`
    : `up: ${fromUnit} (layer ${fromLayer}) may not import ${toUnit} (layer ${toLayer}, above it)`;
  return `${edge.from} -> ${edge.to} (${edge.kind}): ${rule}`;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') ? [relative(root, path)] : [];
  });
}

function importGraph(): ImportEdge[] {
  return sourceFiles(srcDir).flatMap((file) => importsOf(file, readFileSync(join(root, file), 'utf8')));
}

describe('the layering of src/', () => {
  test('the graph counts every kind of import: plain, type-only, re-exports, dynamic import() and import() types', () => {
    const text = [
      "import { a } from '../pager/pager.js';",
      "import type { B } from '../pages/errors.js';",
      "export * from './local.js';",
      "const m = await import('../s3/s3-source.js');",
      "let c: import('../vm/vmm.js').Vmm;",
      "import { readFileSync } from 'node:fs';",
    ].join('\n');
    assert.deepEqual(importsOf('src/sources/x.ts', text).map((edge) => `${edge.kind} ${edge.to}`), [
      'import src/pager/pager.ts',
      'import type src/pages/errors.ts',
      'export from src/sources/local.ts',
      'dynamic import() src/s3/s3-source.ts',
      'import() type src/vm/vmm.ts',
    ]);
  });

  test('an import up or across is named with the importing file, the imported file and the rule', () => {
    assert.equal(violationOf({ from: 'src/pager/pager.ts', to: 'src/uffd/errors.ts', kind: 'import' }), undefined);
    assert.equal(violationOf({ from: 'src/pager/pager.ts', to: 'src/pager/metrics.ts', kind: 'import' }), undefined);
    assert.equal(
      violationOf({ from: 'src/sources/remote.ts', to: 'src/pages/errors.ts', kind: 'import type' }),
      'src/sources/remote.ts -> src/pages/errors.ts (import type): up: sources (layer 5) may not import pages (layer 7, above it)',
    );
    assert.equal(
      violationOf({ from: 'src/lazy/a.ts', to: 'src/handler/b.ts', kind: 'import' }),
      'src/lazy/a.ts -> src/handler/b.ts (import): across: lazy and handler share a layer (lazy, handler, vm) and may not import each other',
    );
    assert.match(violationOf({ from: 'src/newfolder/a.ts', to: 'src/errors.ts', kind: 'import' })!, /newfolder has no layer/);
  });

  test('every folder and root file of src/ has a layer, named once', () => {
    const units = new Set(sourceFiles(srcDir).map(unitOf));
    const placed = LAYERS.flatMap((layer) => layer.units);
    assert.deepEqual(placed.length, new Set(placed).size, 'a unit is in two layers');
    assert.deepEqual([...units].filter((unit) => layerOf(unit) < 0), [], 'units without a layer');
  });

  test('every import in src/ runs down the layers or stays in its own folder', () => {
    const violations = importGraph().flatMap((edge) => violationOf(edge) ?? []);
    assert.deepEqual(violations, []);
  });

  test('the metrics registry and the VM\'s reporter, which the VM\'s control API builds on, reach no handler code', () => {
    const importsFrom = new Map<string, string[]>();
    for (const edge of importGraph()) importsFrom.set(edge.from, [...(importsFrom.get(edge.from) ?? []), edge.to]);
    for (const start of ['src/metrics/metrics-registry.ts', 'src/metrics/vm-reporter.ts']) {
      // Breadth first, keeping each file's first importer, so a reach is reported as its path.
      const via = new Map<string, string | undefined>([[start, undefined]]);
      const queue = [start];
      for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
        for (const next of importsFrom.get(file) ?? []) {
          if (via.has(next)) continue;
          via.set(next, file);
          queue.push(next);
        }
      }
      const reached = [...via.keys()].find((file) => unitOf(file) === 'handler');
      const path: string[] = [];
      for (let file = reached; file !== undefined; file = via.get(file)) path.unshift(file);
      assert.deepEqual(path, [], `${start} reaches src/handler/`);
    }
  });

  test('the layers drawn in docs/architecture.md are the ones checked here', () => {
    const doc = readFileSync(join(root, 'docs/architecture.md'), 'utf8');
    // The doc's table: "| <layer> | `unit`, `unit` | why |", bottom first.
    const rows = [...doc.matchAll(/^\| (\d+) \| ([^|]+) \|/gm)].map((match) => match[2]!.trim().split(/,\s*/).map((unit) => unit.replace(/`/g, '').replace(/\/$/, '')));
    assert.deepEqual(rows, LAYERS.map((layer) => [...layer.units]));
  });
});
