// A Firecracker-style client of `userfault serve`, to try the service without
// Firecracker. README's handler section shows it; test/cli/examples.test.ts runs it.
//
//   userfault serve --socket /tmp/uffd.sock --snapshot /tmp/demo.snap &
//   node dist/examples/firecracker-client.js /tmp/uffd.sock /tmp/demo.snap
//
// It does what Firecracker does when it restores with a page-fault handler:
// maps anonymous memory the size of the snapshot's image, registers it with a
// userfaultfd (MISSING), connects to the socket and sends the regions as JSON
// with the uffd (SCM_RIGHTS). Then it touches every page — each first touch
// blocks this thread in the kernel until serve fills the page — and compares
// what it reads with the snapshot read directly.
import { Mapping, SnapshotSource, Userfaultfd } from 'userfault';
// Node has no way to send a file descriptor over a Unix socket: the addon's sendmsg does it.
import { PAGE_SIZE, native } from 'userfault/dist/src/native.js';

const [socketPath, snapshotPath] = process.argv.slice(2);
if (!socketPath || !snapshotPath) {
  console.error('usage: node firecracker-client.js SOCKET SNAPSHOT');
  process.exit(64);
}
const snapshot = await SnapshotSource.open(snapshotPath);
const memory = Mapping.anonymous(snapshot.sizeBytes);
const uffd = Userfaultfd.open({ nonBlocking: false });
uffd.register(memory.address, memory.lengthBytes, ['MISSING']);

// Firecracker's message: one region per guest memory region, here the whole image at offset 0.
const regions = [{ base_host_virt_addr: memory.address, size: memory.lengthBytes, offset: 0, page_size: PAGE_SIZE }];
const socket = native.unixConnect(socketPath);
const message = new TextEncoder().encode(JSON.stringify(regions));
for (let sent = 0; sent < message.length;) {
  const n = native.sendWithFds(socket, message.subarray(sent), sent === 0 ? [uffd.fd] : []);
  if (n < 0) throw new Error(`sendmsg failed: errno ${-n}`);
  sent += n;
}

const started = performance.now();
const bytes = memory.bytes();
const expected = new Uint8Array(PAGE_SIZE);
let bad = 0;
for (let offset = 0; offset < memory.lengthBytes; offset += PAGE_SIZE) {
  await snapshot.read(offset, PAGE_SIZE, expected);
  // This read is the first touch: the kernel holds it until serve has filled the page.
  if (Buffer.compare(bytes.subarray(offset, offset + PAGE_SIZE), expected) !== 0) bad++;
}
console.log(`${memory.lengthBytes / PAGE_SIZE} pages touched through serve in ${(performance.now() - started).toFixed(1)} ms, ${bad} differ from the snapshot`);
await snapshot.close();
// Exit without unmapping: the socket and the uffd close with the process, and serve logs the client gone.
process.exit(bad === 0 ? 0 : 1);
