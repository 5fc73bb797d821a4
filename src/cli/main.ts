#!/usr/bin/env node
// The `userfault` command: src/cli/program.ts, run on this process's arguments.
import { exitCodeFor } from '../exit-codes.js';
import { prewarmVcpuWorkers } from '../vm/vcpu-worker-pool.js';

// A command that starts a VM has its first vCPU's worker load on the other
// core while this thread loads the rest of the program (tens of ms each).
const [, , group, command] = process.argv;
if (group === 'vm' && (command === 'run' || command === 'restore' || command === 'receive')) prewarmVcpuWorkers(1);

let main: (argv: string[]) => Promise<number>;
try {
  ({ main } = await import('./program.js'));
} catch (error) {
  // The program's packages are missing: never installed here, or being installed right now (npm ci removes
  // node_modules first). Said in the CLI's own error shape (program.ts, which prints it otherwise, cannot load).
  const { code, message } = error as { code?: string; message?: string };
  const missing = code === 'ERR_MODULE_NOT_FOUND' ? /Cannot find package '([^']+)'/.exec(message ?? '')?.[1] : undefined;
  if (missing === undefined) throw error;
  const text = `the package ${missing} that userfault needs is not installed here, or is being installed right now (npm ci removes node_modules first): run \`npm ci\` (or scripts/setup.sh) and let it finish`;
  const exitStatus = exitCodeFor({ code: 'ENODEPS' });
  process.stderr.write(process.argv.includes('--json') ? `${JSON.stringify({ error: { code: 'ENODEPS', message: text, exitStatus } })}\n` : `userfault: ${text} [ENODEPS]\n`);
  process.exit(exitStatus);
}

process.exitCode = await main(process.argv);
