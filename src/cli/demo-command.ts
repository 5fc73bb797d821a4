// `userfault demo`: the main job on a built-in default (src/demo/demo.ts).
// Ctrl-C or SIGTERM stops it and removes its temporary snapshot; it shows its
// progress on stderr (src/cli/progress.ts: in place on a terminal, a line a
// tenth otherwise, nothing under --json).
import { Option, type Command } from 'commander';
import { runDemo, type DemoPhase } from '../demo/demo.js';
import { ExitCode } from '../exit-codes.js';
import { PAGE_SIZE } from '../native.js';
import { InterruptedError } from './errors.js';
import { printError } from './output.js';
import { patternArg, sizeArg } from './parse.js';
import { ByteProgress, ProgressView, progressMode } from './progress.js';

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
    .addOption(new Option('--pattern <order>', 'touch order: sequential (or seq) or random').argParser(patternArg).default('sequential'))
    .option('--json', 'print the result as one JSON object')
    .action(async (options: DemoCliOptions) => {
      const json = options.json === true;
      const controller = new AbortController();
      const onSignal = (signal: NodeJS.Signals): void => {
        controller.abort(new InterruptedError(signal, 'the demo was stopped and its temporary snapshot removed'));
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const view = new ProgressView(progressMode(json));
      const bars: Partial<Record<DemoPhase, ByteProgress>> = {};
      const labels: Record<DemoPhase, string> = { write: 'writing the snapshot', touch: 'touching pages' };
      try {
        const result = await runDemo({
          sizeBytes: options.size,
          pattern: options.pattern,
          log: json ? () => {} : (line) => {
            view.clear();
            console.log(line);
          },
          progress: (phase, doneBytes, totalBytes) => (bars[phase] ??= new ByteProgress(view, labels[phase])).update(doneBytes, totalBytes),
          signal: controller.signal,
        });
        view.clear();
        if (json) console.log(JSON.stringify(result, null, 2));
        if (result.badPages.length > 0) process.exitCode = ExitCode.CHECK_FAILED;
      } catch (error) {
        view.clear();
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
