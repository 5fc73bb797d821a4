import type { Command } from 'commander';
import { formatSnapshotReport, inspectSnapshot } from '../snapshot/index.js';

export function registerSnapshotCommands(program: Command): void {
  const snapshot = program.command('snapshot').description('memory snapshot files');
  snapshot
    .command('inspect <file>')
    .description('show a snapshot\'s header, regions and page counts, and verify every page checksum')
    .option('--json', 'print as JSON')
    .option('--no-verify', 'skip reading and checking every page')
    .action(async (file: string, options: { json?: boolean; verify: boolean }) => {
      const report = await inspectSnapshot(file, { verify: options.verify });
      console.log(options.json ? JSON.stringify(report, null, 2) : formatSnapshotReport(report));
      if (!report.ok) process.exitCode = 1;
    });
}
