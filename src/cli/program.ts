// The `userfault` command line (main.ts runs it). Every command ends the same way: its result
// on stdout, an error on stderr (one JSON object under --json), and an exit
// status from the one scheme of src/exit-codes.ts (docs/exit-codes.md).
import { Command, CommanderError } from 'commander';
import { ExitCode, exitCodeFor } from '../exit-codes.js';
import { registerDashboardCommand } from './dashboard-command.js';
import { registerDemoCommand } from './demo-command.js';
import { UsageError } from './errors.js';
import { printError, printWarning } from './output.js';
import { registerProbeCommand } from './probe-command.js';
import { registerPagesCommand } from './pages-command.js';
import { registerServeCommand } from './serve-command.js';
import { registerSnapshotCommands } from './snapshot-commands.js';
import { registerVmCommands } from './vm-commands.js';

export const DESCRIPTION =
  'Userland page-fault handling, lazy memory and a KVM micro-VMM on userfaultfd: snapshots restored lazily ' +
  '(from a file, a page server or S3-compatible object storage), a Firecracker-style page-fault handler, and the ' +
  'micro-VMM with live migration that survives network cuts and authenticates its peers; Prometheus metrics and a live dashboard';

/** What commander reported of a usage error it found itself (so it is printed once). */
interface UsageReport {
  message: string | undefined;
}

export function buildProgram(json: boolean, usage: UsageReport = { message: undefined }): Command {
  const program = new Command('userfault')
    .description(DESCRIPTION)
    .version('0.1.0')
    .showHelpAfterError('(add --help for usage)')
    .allowExcessArguments(false)
    // Set before the commands are added: each inherits it when created.
    .exitOverride()
    .configureOutput({
      outputError: (text, write) => {
        usage.message = text.trim().replace(/^error: /, '');
        if (!json) write(text);
      },
      // Under --json nothing but JSON reaches stderr: not the help after an error either.
      writeErr: (text) => {
        if (!json) process.stderr.write(text);
      },
    });
  registerDemoCommand(program);
  registerProbeCommand(program);
  registerSnapshotCommands(program);
  registerServeCommand(program);
  registerPagesCommand(program);
  registerVmCommands(program);
  registerDashboardCommand(program);
  return program;
}

/**
 * Whether the command line asks for JSON (so an error found before parsing is
 * printed as JSON too): --json, or a service's --log-format json.
 */
export function wantsJson(args: readonly string[]): boolean {
  const end = args.indexOf('--');
  const given = end < 0 ? args : args.slice(0, end);
  return given.includes('--json') || given.includes('--log-format=json') || given.some((arg, i) => arg === '--log-format' && given[i + 1] === 'json');
}

/**
 * A process warning (process.emitWarning: an error a library had no listener
 * for) in the project's own words, instead of Node's `(node:PID) [CODE] ...
 * (Use node --trace-warnings ...)`: Node's printer is replaced by ours.
 */
export function printWarningsAs(json: boolean): void {
  process.removeAllListeners('warning');
  process.on('warning', (warning) => printWarning(warning, json));
}

export async function main(argv: readonly string[]): Promise<number> {
  const json = wantsJson(argv.slice(2));
  printWarningsAs(json);
  const usage: UsageReport = { message: undefined };
  try {
    await buildProgram(json, usage).parseAsync([...argv]);
    return Number(process.exitCode ?? ExitCode.OK);
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end with a CommanderError too, status 0.
      if (error.exitCode === 0) return ExitCode.OK;
      if (error.code === 'commander.help') {
        // A command that needs a subcommand got none: commander printed the help (not under --json).
        if (json) printError(new UsageError('a command is required (userfault --help lists them)'), json, ExitCode.USAGE);
        return ExitCode.USAGE;
      }
      // commander printed the ones it found itself; an InvalidArgumentError thrown by an action it did not.
      if (usage.message === undefined || json) {
        printError(new UsageError(usage.message ?? error.message.replace(/^error: /, '')), json, ExitCode.USAGE);
      }
      return ExitCode.USAGE;
    }
    const status = exitCodeFor(error);
    printError(error, json, status);
    return status;
  }
}
