// A runnable VMM process (what `userfault vm run|restore` will call):
//
//   node dist/src/vm/vmm-main.js run [--image builtin|FILE] [--mem 32M] [--cpus 1]
//        [--cmdline "workload=writer mem=16"] [--api-sock PATH] [--log FILE]
//   node dist/src/vm/vmm-main.js restore SNAPSHOT [--api-sock PATH] [--log FILE]
//
// The guest's console goes to stdout (and to --log). The VMM's own lines go
// to stderr as `vmm: {json}`. The process exits with the guest's done status,
// 0 after a Stop, 70 when the guest failed, 64 for a bad request.
import { appendFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { startControlApi } from './control-api.js';
import { VmError } from './errors.js';
import { Vmm } from './vmm.js';

function parseBytes(text: string): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(text.trim());
  if (!m) throw new VmError(`not a size: ${text}`);
  const unit = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * unit;
}

const say = (event: Record<string, unknown>): void => {
  process.stderr.write(`vmm: ${JSON.stringify(event)}\n`);
};

export async function main(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      image: { type: 'string', default: 'builtin' },
      mem: { type: 'string', default: '32M' },
      cpus: { type: 'string', default: '1' },
      cmdline: { type: 'string', default: 'workload=idle' },
      'api-sock': { type: 'string' },
      log: { type: 'string' },
    },
  });
  const [command, snapshotPath] = positionals;
  const log = values.log;
  if (log) writeFileSync(log, '');
  const console = (bytes: Uint8Array): void => {
    process.stdout.write(bytes);
    if (log) appendFileSync(log, bytes);
  };
  const started = performance.now();
  let vmm: Vmm;
  if (command === 'run') {
    vmm = await Vmm.boot({ image: values.image!, memoryBytes: parseBytes(values.mem!), vcpuCount: Number(values.cpus), cmdline: values.cmdline!, console });
  } else if (command === 'restore' && snapshotPath) {
    vmm = await Vmm.restore(snapshotPath, { console });
  } else {
    process.stderr.write('usage: vmm-main.js run [options] | restore SNAPSHOT [options]\n');
    return 64;
  }
  let stopRequested = false;
  const server = values['api-sock']
    ? await startControlApi(vmm, values['api-sock'], { onStop: () => { stopRequested = true; void vmm.close(); } })
    : undefined;
  await vmm.resume();
  say({ event: 'running', command, readyMs: +(performance.now() - started).toFixed(2) });
  const reason = await vmm.exited;
  say({ event: 'exited', reason, status: vmm.status() });
  server?.close();
  await vmm.close();
  if (reason.type === 'done') return reason.status;
  if (reason.type === 'stopped' || stopRequested) return 0;
  return 70;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: Error & { code?: string }) => {
    say({ event: 'error', name: error.name, code: error.code, message: error.message });
    process.exit(error instanceof VmError ? 64 : 70);
  },
);
