// Command line of `npm run bench` (node dist/bench/run.js): pure parsing.
import { parseArgs } from 'node:util';
import { MIGRATE_ARG_OPTIONS, MIGRATE_USAGE, parseMigrateOptions, type MigrateOptions } from './migrate/options.js';

export const SECTION_NAMES = ['per-fault', 'restore', 'working-set', 'concurrency', 'remote', 's3', 'vm-resume', 'firecracker'] as const;
/** Run only when named: migrate installs QEMU and takes minutes. */
export const OPT_IN_SECTIONS = ['migrate'] as const;
export type SectionName = (typeof SECTION_NAMES)[number] | (typeof OPT_IN_SECTIONS)[number];

export interface BenchOptions {
  sizeBytes: number;
  rounds: number;
  sections: SectionName[];
  /** Busy-poll budget of the spinning variants. */
  spinUs: number;
  /** Injected latency of the concurrency section's source. */
  delayUs: number;
  /** Faults per thread in the concurrency section. */
  concurrencyFaults: number;
  /** Demand faults per run in the remote section's latency part. */
  remoteFaults: number;
  seed: number;
  /** Where the results JSON goes (a directory). */
  outDir: string;
  /** Keep the work directory (image, binaries, order files). */
  keep: boolean;
  /** Write CPU profiles of the firecracker section's serve processes here (node --cpu-prof). */
  serveProfileDir?: string;
  /** A build of this project (its dist directory) whose serve the firecracker section runs beside this one's: before and after, in one run. */
  serveBaseline?: string;
  migrate: MigrateOptions;
  help: boolean;
}

export const USAGE = `usage: npm run bench -- [options]      (or: node dist/bench/run.js [options])
  --size SIZE              memory per run: 256M (default), 1G, 64M, 512K ... (a multiple of 4 KiB)
  --rounds N               rounds of every section, variants interleaved (default 5)
  --sections LIST          comma-separated: ${SECTION_NAMES.join(',')} (default: these), ${OPT_IN_SECTIONS.join(',')}
  --spin-us N              busy-poll budget of the spinning handlers (default 50)
  --delay-us N             source latency in the concurrency section (default 200)
  --concurrency-faults N   faults per thread in the concurrency section (default 1000)
  --remote-faults N        random demand faults per run in the remote section (default 1000)
  --seed N                 seed of the random patterns (default 1)
  --out DIR                where results/bench-<timestamp>.json goes (default results)
  --keep                   keep the work directory (image, compiled C, order files)
  --serve-cpu-prof DIR     profile the firecracker section's userfault serve processes (node --cpu-prof) into DIR
  --serve-baseline DIST    also run serve from another build (its dist directory) in the firecracker section
${MIGRATE_USAGE}`;

const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 };

/** "256M" -> 268435456; plain numbers are bytes. */
export function parseSize(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) throw new RangeError(`--size ${text}: expected a number with an optional K, M or G suffix`);
  const bytes = Math.round(Number(match[1]) * UNITS[match[2]!.toUpperCase()]!);
  if (bytes <= 0 || bytes % 4096 !== 0) throw new RangeError(`--size ${text}: must be a positive multiple of 4 KiB`);
  return bytes;
}

function positiveInteger(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 0) throw new RangeError(`--${name} ${text}: expected a non-negative integer`);
  return value;
}

export function parseBenchArgs(argv: readonly string[]): BenchOptions {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      size: { type: 'string' },
      rounds: { type: 'string' },
      sections: { type: 'string' },
      'spin-us': { type: 'string' },
      'delay-us': { type: 'string' },
      'concurrency-faults': { type: 'string' },
      'remote-faults': { type: 'string' },
      seed: { type: 'string' },
      out: { type: 'string' },
      keep: { type: 'boolean' },
      'serve-cpu-prof': { type: 'string' },
      'serve-baseline': { type: 'string' },
      ...MIGRATE_ARG_OPTIONS,
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  const sections = values.sections === undefined ? [...SECTION_NAMES] : values.sections.split(',').map((s) => s.trim());
  for (const section of sections) {
    if (![...SECTION_NAMES, ...OPT_IN_SECTIONS].includes(section as SectionName)) {
      throw new RangeError(`--sections: unknown section ${section} (known: ${[...SECTION_NAMES, ...OPT_IN_SECTIONS].join(', ')})`);
    }
  }
  const rounds = positiveInteger('rounds', values.rounds, 5);
  if (rounds < 1) throw new RangeError('--rounds must be at least 1');
  return {
    sizeBytes: parseSize(values.size ?? '256M'),
    rounds,
    sections: sections as SectionName[],
    spinUs: positiveInteger('spin-us', values['spin-us'], 50),
    delayUs: positiveInteger('delay-us', values['delay-us'], 200),
    concurrencyFaults: positiveInteger('concurrency-faults', values['concurrency-faults'], 1000),
    remoteFaults: positiveInteger('remote-faults', values['remote-faults'], 1000),
    seed: positiveInteger('seed', values.seed, 1),
    outDir: values.out ?? 'results',
    keep: values.keep ?? false,
    serveProfileDir: values['serve-cpu-prof'],
    serveBaseline: values['serve-baseline'],
    migrate: parseMigrateOptions(values, parseSize),
    help: values.help ?? false,
  };
}
