// `userfault snapshot inspect FILE`: exit 0 when every checksum matched, 1 when
// the page check found a corrupt page (the file is a readable snapshot and the
// report names the pages), 65 when the file is not a readable snapshot at all
// (truncated, bad magic, a damaged header or table), 66 when it is missing.
import { statSync } from 'node:fs';
import type { Command } from 'commander';
import { ExitCode } from '../exit-codes.js';
import { formatSnapshotReport, inspectSnapshot } from '../snapshot/index.js';
import { InputNotFoundError } from './errors.js';
import { registerSnapshotTransferCommands } from './s3-snapshot-commands.js';

export function registerSnapshotCommands(program: Command): void {
  const snapshot = program.command('snapshot').description('memory snapshot files');
  snapshot
    .command('inspect <file>')
    .description('show a snapshot\'s header, regions and page counts, and verify every page checksum')
    .option('--json', 'print the report as one JSON object')
    .option('--no-verify', 'skip reading and checking every page')
    .action(async (file: string, options: { json?: boolean; verify: boolean }) => {
      checkInputFile(file);
      const report = await inspectSnapshot(file, { verify: options.verify });
      console.log(options.json ? JSON.stringify(report, null, 2) : formatSnapshotReport(report));
      if (!report.ok) process.exitCode = ExitCode.CHECK_FAILED;
    });
  registerSnapshotTransferCommands(snapshot);
}

/** Refuse a path that is not an existing regular file, naming it (EACCES is left to the open). */
export function checkInputFile(path: string): void {
  let stats;
  try {
    stats = statSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new InputNotFoundError(path, 'does not exist', { cause: error });
    throw error;
  }
  if (stats.isDirectory()) throw new InputNotFoundError(path, 'is a directory');
  if (!stats.isFile()) throw new InputNotFoundError(path, 'is not a regular file');
}
