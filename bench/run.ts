// `npm run bench`: builds the C programs, writes the image as a snapshot, runs
// the sections (variants interleaved over rounds), prints the tables and
// writes everything to results/bench-<timestamp>.json. See docs/bench.md.
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { USAGE, parseBenchArgs, type BenchOptions, type SectionName } from './args.js';
import { buildCPrograms } from './c-programs.js';
import { BenchChild } from './child.js';
import { writeBenchImage } from './image.js';
import type { BenchContext } from './runner.js';
import { concurrencySection } from './sections/concurrency.js';
import { firecrackerSection } from './sections/firecracker.js';
import { migrateSection } from './sections/migrate.js';
import { perFaultSection } from './sections/per-fault.js';
import { remoteSection } from './sections/remote.js';
import { restoreSection } from './sections/restore.js';
import { vmResumeSection } from './sections/vm-resume.js';
import { s3Section } from './sections/s3.js';
import type { Section, SectionResult } from './sections/section.js';
import { workingSetSection } from './sections/working-set.js';
import type { TargetResult } from './stats.js';
import { formatTable, targetsTable } from './table.js';

const SECTIONS: Record<SectionName, Section> = {
  'per-fault': perFaultSection,
  restore: restoreSection,
  'working-set': workingSetSection,
  concurrency: concurrencySection,
  migrate: migrateSection,
  'vm-resume': vmResumeSection,
  remote: remoteSection,
  s3: s3Section,
  firecracker: firecrackerSection,
};

export interface BenchOutcome {
  sections: SectionResult[];
  targets: TargetResult[];
  /** Everything printed, tables and targets. */
  text: string;
  jsonPath: string;
}

export async function runBench(options: BenchOptions, log: (line: string) => void = (line) => console.error(line)): Promise<BenchOutcome> {
  const startedAt = new Date();
  const loadBefore = loadavg();
  // Taken before anything runs: others may commit while a long run goes on.
  const source = gitState();
  const workDir = mkdtempSync(join(tmpdir(), 'userfault-bench-'));
  let delayServer: BenchChild | undefined;
  try {
    log(`bench: work directory ${workDir}`);
    const programs = buildCPrograms(workDir);
    // The migrate section boots its own guests: alone, it needs no image.
    const imageBytes = options.sections.every((name) => name === 'migrate') ? 4096 : options.sizeBytes;
    log(`bench: writing a ${imageBytes >= 1 << 20 ? `${imageBytes / (1 << 20)} MiB` : `${imageBytes >> 10} KiB`} snapshot`);
    const image = await writeBenchImage(join(workDir, 'image.snap'), imageBytes);
    // Reading it back leaves the file in the page cache for every variant.
    const imageMemory = new SharedArrayBuffer(imageBytes);
    readInto(image.path, image.dataOffset, new Uint8Array(imageMemory));
    const ctx: BenchContext = {
      programs,
      image,
      imageMemory,
      workDir,
      // Generous: a run of 1 GiB of 4 KiB faults at ~100 us each is ~30 s.
      runTimeoutMs: 120_000 + (options.sizeBytes / 4096) * 2,
      log,
    };
    if (options.sections.includes('concurrency')) {
      ctx.delaySocket = join(workDir, 'delay.sock');
      delayServer = new BenchChild('delay-server', programs.delayServer, ['--socket', ctx.delaySocket, '--delay-us', String(options.delayUs)]);
      await delayServer.waitForLine(/^listening$/, 10_000);
    }
    const sections: SectionResult[] = [];
    for (const name of options.sections) {
      log(`bench: section ${name}`);
      sections.push(await SECTIONS[name](ctx, options));
    }
    const targets = sections.flatMap((s) => s.targets);
    const text = [...sections.flatMap((s) => s.tables.map(formatTable)), formatTable(targetsTable(targets))].join('\n\n');
    const outDir = resolve(options.outDir);
    mkdirSync(outDir, { recursive: true });
    const jsonPath = join(outDir, `bench-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
    const json = {
      meta: {
        startedAt: startedAt.toISOString(),
        finishedAt: new Date().toISOString(),
        command: `node dist/bench/run.js ${process.argv.slice(2).join(' ')}`.trim(),
        options,
        host: { cpus: cpus().length, cpuModel: cpus()[0]?.model, kernel: release(), node: process.version, loadavgBefore: loadBefore, loadavgAfter: loadavg() },
        source,
        image: { sizeBytes: image.sizeBytes, dataOffset: image.dataOffset },
      },
      targets,
      sections: Object.fromEntries(sections.map((s) => [s.name, { summary: s.summary, runs: s.runs }])),
      text,
    };
    writeFileSync(jsonPath, JSON.stringify(json, null, 1));
    return { sections, targets, text, jsonPath };
  } finally {
    delayServer?.kill();
    if (options.keep) log(`bench: kept ${workDir}`);
    else rmSync(workDir, { recursive: true, force: true });
  }
}

function readInto(path: string, offset: number, target: Uint8Array): void {
  const fd = openSync(path, 'r');
  try {
    for (let done = 0; done < target.length; ) {
      const n = readSync(fd, target, done, Math.min(target.length - done, 64 << 20), offset + done);
      if (n === 0) throw new Error(`${path} ends before its image does`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
}

/** The commit the run started from, and the measured code's files that differed from it. */
function gitState(): { commit?: string; uncommitted?: string[] } {
  const git = (...args: string[]): string => execFileSync('git', args, { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  try {
    // Porcelain lines are "XY path": trimming the whole output would eat the first line's status column and shift its path.
    const changed = git('status', '--porcelain', '--', 'src', 'native', 'bench').split('\n').filter((line) => line.length > 3);
    return { commit: git('rev-parse', '--short', 'HEAD').trim(), uncommitted: changed.map((line) => line.slice(3)) };
  } catch {
    return {};
  }
}

async function main(): Promise<void> {
  let options: BenchOptions;
  try {
    options = parseBenchArgs(process.argv.slice(2));
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (options.help) {
    console.log(USAGE);
    return;
  }
  const outcome = await runBench(options);
  console.log(outcome.text);
  console.log(`\nresults: ${outcome.jsonPath}`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((error: Error) => {
    console.error(error.stack ?? error.message);
    process.exit(1);
  });
}
