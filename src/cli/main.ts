#!/usr/bin/env node
// The `userfault` command line.
import { Command, InvalidArgumentError, Option } from 'commander';
import { runDemo } from '../demo/demo.js';
import { parseSize } from './parse.js';
import { registerSnapshotCommands } from './snapshot-commands.js';
import { registerProbeCommand } from './probe-command.js';
import { registerServeCommand } from './serve-command.js';
import { registerPagesCommand } from './pages-command.js';
import { registerVmCommands } from './vm-commands.js';

export function buildProgram(): Command {
  const program = new Command('userfault')
    .description('Userland page-fault handling, lazy memory and post-copy live migration on userfaultfd and KVM')
    .version('0.1.0')
    .showHelpAfterError();

  program
    .command('demo')
    .description('the main job on a built-in default: snapshot a patterned image, restore it lazily, touch and verify every page')
    .addOption(new Option('--size <bytes>', 'image size (K/M/G suffixes)').default('64M'))
    .addOption(new Option('--pattern <order>', 'touch order').choices(['sequential', 'random']).default('sequential'))
    .option('--json', 'print the result as JSON')
    .action(async (options: { size: string; pattern: 'sequential' | 'random'; json?: boolean }) => {
      const result = await runDemo({
        sizeBytes: parseSize(options.size),
        pattern: options.pattern,
        log: options.json ? () => {} : (line) => console.log(line),
      });
      if (options.json) console.log(JSON.stringify(result, null, 2));
      if (result.badPages.length > 0) process.exitCode = 1;
    });

  registerProbeCommand(program);
  registerSnapshotCommands(program);
  registerServeCommand(program);
  registerPagesCommand(program);
  registerVmCommands(program);
  return program;
}

export { InvalidArgumentError };

buildProgram()
  .parseAsync(process.argv)
  .catch((error: Error & { code?: string }) => {
    console.error(`userfault: ${error.message}${error.code ? ` [${error.code}]` : ''}`);
    process.exitCode = 1;
  });
