// Measures boot, dirty rate, snapshot and eager restore of the micro guest:
//   node dist/src/vm/vmm-measure.js [RAM_MiB=64] [REGION_MiB=32] [SNAPSHOT_PATH]
// Prints one JSON object (the numbers in docs/vm.md).
import { Vmm } from './vmm.js';
const MiB = 1 << 20;
const memMiB = Number(process.argv[2] ?? 64), regionMiB = Number(process.argv[3] ?? 32);
const snapPath = process.argv[4] ?? `/tmp/vmm-measure-${process.pid}.snap`;
let out = '';
const wait = async (re: RegExp): Promise<void> => { while (!re.test(out)) await new Promise((r) => setTimeout(r, 5)); };
let t = performance.now();
const vmm = await Vmm.boot({ image: 'builtin', memoryBytes: memMiB * MiB, cmdline: `workload=writer mem=${regionMiB} hb=100 pattern=random`, console: (b: Uint8Array) => { out += Buffer.from(b).toString(); } });
const built = performance.now() - t;
await vmm.resume();
await wait(/micro: boot/);
const firstLine = performance.now() - t;
await wait(/fill pages/);
const filled = performance.now() - t;
await wait(/hb 3 [^\n]*\n/);
const m = [...out.matchAll(/hb (\d+) dirtied=(\d+) ticks=(\d+)/g)].map(x => x.slice(1).map(Number));
const [a, b] = [m[1]!, m[2]!] as [number[], number[]];
const pagesPerSec = (b[1] - a[1]) / ((b[2] - a[2]) / 100);
t = performance.now();
const snap = await vmm.snapshot(snapPath);
await vmm.close();
t = performance.now();
let out2 = '';
const r = await Vmm.restore(snapPath, { console: (b: Uint8Array) => { out2 += Buffer.from(b).toString(); } });
const restoreMs = performance.now() - t;
await r.resume();
const resumedMs = performance.now() - t;
while (!/hb \d+ /.test(out2)) await new Promise((r) => setTimeout(r, 5));
const firstHbMs = performance.now() - t;
await r.sendInput(Buffer.from('q'));
await r.exited;
await r.close();
console.log(JSON.stringify({ memMiB, regionMiB, buildMs: +built.toFixed(1), firstConsoleLineMs: +firstLine.toFixed(1), fillDoneMs: +filled.toFixed(1), fillPages: regionMiB * 256,
  pagesDirtiedPerSec: Math.round(pagesPerSec), approxInstrPerSec: Math.round(pagesPerSec * 40),
  snapshot: { fileSizeBytes: snap.fileSizeBytes, dataPages: snap.dataPageCount, zeroPages: snap.zeroPageCount, metadataBytes: snap.metadataLengthBytes, pauseMs: +snap.pauseMs.toFixed(2), saveStateMs: +snap.saveStateMs.toFixed(1), totalMs: +snap.durationMs.toFixed(1) },
  eagerRestore: { readyMs: +restoreMs.toFixed(1), resumedMs: +resumedMs.toFixed(1), firstHeartbeatMs: +firstHbMs.toFixed(1) }, verify: out2.match(/verify.*/)?.[0] }, null, 1));

(await import('node:fs')).rmSync(snapPath, { force: true });
