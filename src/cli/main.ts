#!/usr/bin/env node
// The `userfault` command: src/cli/program.ts, run on this process's arguments.
import { main } from './program.js';

process.exitCode = await main(process.argv);
