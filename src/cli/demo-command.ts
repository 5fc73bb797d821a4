// `userfault demo`: the main job on a built-in default (src/demo/demo.ts).
// Ctrl-C or SIGTERM stops it and removes its temporary snapshot; on a terminal
// (and not under --json) it draws its progress on stderr.
import { Option, type Command } from 'commander';
import { runDemo, type DemoPhase } from '../demo/demo.js';
import { ExitCode } from '../exit-codes.js';
import { PAGE_SIZE } from '../native.js';
import { InterruptedError } from './errors.js';
import { printError } from './output.js';
import { sizeArg } from './parse.js';

interface DemoCliOptions {
  size: number;
  pattern: 'sequential' | 'random';
  json?: boolean;
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('the main job on a built-in default: snapshot a patterned image, restore it lazily, touch and verify every page')
    .addOption(
      new Option('--size <bytes>', 'image size (K/M/G suffixes), a multiple of the page size')
        .argParser(sizeArg({ min: PAGE_SIZE, multipleOf: PAGE_SIZE, multipleName: `the ${PAGE_SIZE}-byte page` }))
        .default(64 << 20, '64M'),
    )
    .addOption(new Option('--pattern <order>', 'touch order').choices(['sequential', 'random']).default('sequential'))
    .option('--json', 'print the result as one JSON object')
    .action(async (options: DemoCliOptions) => {
      const json = options.json === true;
      const controller = new AbortController();
      const onSignal = (signal: NodeJS.Signals): void => {
        controller.abort(new InterruptedError(signal, 'the demo was stopped and its temporary snapshot removed'));
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const progress = !json && process.stderr.isTTY ? progressLine() : undefined;
      try {
        const result = await runDemo({
          sizeBytes: options.size,
          pattern: options.pattern,
          log: json ? () => {} : (line) => {
            progress?.clear();
            console.log(line);
          },
          progress: progress?.draw,
          signal: controller.signal,
        });
        if (json) console.log(JSON.stringify(result, null, 2));
        if (result.badPages.length > 0) process.exitCode = ExitCode.CHECK_FAILED;
      } catch (error) {
        progress?.clear();
        if (!(error instanceof InterruptedError)) throw error;
        // Cleaned up: say so, then die of the signal as the shell expects (status 128 + signal number).
        printError(error, json, 128 + (error.signal === 'SIGINT' ? 2 : 15));
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        process.kill(process.pid, error.signal);
        await new Promise(() => {});
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}

/** One line on stderr redrawn in place, at most ten times a second. */
function progressLine(): { draw: (phase: DemoPhase, doneBytes: number, totalBytes: number) => void; clear: () => void } {
  let last = 0;
  let shown = false;
  return {
    draw: (phase, doneBytes, totalBytes) => {
      const now = performance.now();
      if (now - last < 100 && doneBytes < totalBytes) return;
      last = now;
      shown = true;
      const mib = (bytes: number): string => (bytes / (1 << 20)).toFixed(0);
      const percent = Math.floor((100 * doneBytes) / totalBytes);
      process.stderr.write(`\r\x1b[K${phase === 'write' ? 'writing the snapshot' : 'touching pages'}: ${mib(doneBytes)} of ${mib(totalBytes)} MiB (${percent}%)`);
    },
    clear: () => {
      if (shown) process.stderr.write('\r\x1b[K');
      shown = false;
    },
  };
}
