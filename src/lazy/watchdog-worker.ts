// Entry point of a watchdog thread: waits for the handler to die, then applies the policy.
import { writeSync } from 'node:fs';
import { workerData, parentPort } from 'node:worker_threads';
import { native } from '../native.js';
import { Userfaultfd } from '../uffd/index.js';
import type { WatchdogWorkerData } from './watchdog.js';

const data = workerData as WatchdogWorkerData;
let fired = false;

function handlerLost(reason: string): void {
  if (fired) return;
  fired = true;
  parentPort?.postMessage({ type: 'handler-lost', reason });
  if (data.policy === 'kill') {
    // Straight to fd 2: a worker's process.stderr goes through the main thread, which may be the one stuck in a fault.
    writeSync(2, `userfault watchdog: page-fault handler lost (${reason}); killing process ${process.pid}\n`);
    process.kill(process.pid, 'SIGKILL');
    return;
  }
  if (data.policy === 'poison') poisonForever();
}

/** Serve every fault with poison, blocking this thread (it has nothing else to do). */
function poisonForever(): void {
  const uffd = Userfaultfd.adopt(data.uffdFd, ['POISON']);
  // Threads whose faults the dead handler read sleep on messages nobody will
  // answer: wake them all, so each retries and faults again, into this loop.
  // A woken thread whose page did arrive just retries its access.
  for (const region of data.regions) uffd.wake(region.address, region.lengthBytes);
  for (;;) {
    if (!uffd.waitReadable(1000)) continue;
    for (const event of uffd.readEvents()) {
      if (event.type !== 'pagefault') continue;
      const page = event.address - (event.address % native.constants.PAGE_SIZE);
      const result = uffd.poison(page, native.constants.PAGE_SIZE);
      if (result.status === 'exists') uffd.wake(page, native.constants.PAGE_SIZE);
    }
  }
}

parentPort?.on('message', (message: { type: 'disarm' }) => {
  if (message.type === 'disarm') {
    fired = true;
    process.exit(0);
  }
});
if (data.lifeline) {
  data.lifeline.on('close', () => handlerLost('pager thread exited'));
  data.lifeline.start();
}
if (data.handlerPidfd !== undefined) {
  native.watchFd(data.handlerPidfd, native.constants.UV_READABLE, () => handlerLost('handler process exited'));
}
parentPort?.postMessage({ type: 'armed' });
