#!/usr/bin/env node
// The `userfault` command: src/cli/program.ts, run on this process's arguments.
import { prewarmVcpuWorkers } from '../vm/vcpu-worker-pool.js';

// A command that starts a VM has its first vCPU's worker load on the other
// core while this thread loads the rest of the program (tens of ms each).
const [, , group, command] = process.argv;
if (group === 'vm' && (command === 'run' || command === 'restore' || command === 'receive')) prewarmVcpuWorkers(1);
const { main } = await import('./program.js');

process.exitCode = await main(process.argv);
