// One vCPU thread. It adopts the vCPU fd the VMM created, then loops:
// handle commands, and while running, KVM_RUN and decode/handle each exit.
// KVM_RUN blocks this thread (not the VMM's event loop) for as long as the
// guest runs without an exit to userspace; the in-kernel irqchip and PIT
// handle timer interrupts and HLT without one.
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { kvmNative } from '../native-kvm.js';
import { native } from '../native.js';
import { BoardDevices } from './devices/board.js';
import { PortIoBus } from './devices/port-io.js';
import { describeExit } from './kvm/exits.js';
import { KvmVcpu } from './kvm/kvm-vcpu.js';
import { encodeVcpuError, VcpuCounterBlock, type GuestExitReason, type VcpuCommand, type VcpuEvent, type VcpuWorkerData } from './vcpu-protocol.js';
import { nextVcpuState, type VcpuRunState } from './vcpu-state-machine.js';

// Started ahead of its vCPU (vcpu-worker-pool.ts): the vCPU comes as the first message.
const data = (workerData as VcpuWorkerData | null) ?? (await new Promise<VcpuWorkerData>((resolve) => parentPort!.once('message', resolve)));
const port = data.port;
const doorbell = new Int32Array(data.doorbell);
const vcpu = KvmVcpu.adopt(data.vcpuFd, data.vcpuId, data.mmapSize, data.xsaveBytes);
const counters = new VcpuCounterBlock(data.counters);
let state = 'paused' as VcpuRunState;
let exitReason: GuestExitReason | undefined;
let pendingOutput: Uint8Array[] = [];

const post = (event: VcpuEvent, transfer: ArrayBuffer[] = []): void => parentPort!.postMessage(event, transfer);

const bus = new PortIoBus();
// vCPU 0's worker holds the board's devices: port I/O exits arrive on the vCPU thread that made them.
const devices = data.ownsDevices
  ? new BoardDevices(bus, {
      output: (bytes) => pendingOutput.push(bytes),
      // The VMM raises the line on the VM fd (KVM_IRQ_LINE); any thread may.
      irq: (line, level) => post({ type: 'irq', irq: line, level: level ? 1 : 0 }),
      guestDone: (status) => guestExit({ type: 'done', status }),
    })
  : undefined;

function guestExit(reason: GuestExitReason): void {
  exitReason ??= reason;
  state = nextVcpuState(state, 'guest-exit');
}

function flushOutput(): void {
  if (pendingOutput.length === 0) return;
  const total = pendingOutput.reduce((n, b) => n + b.byteLength, 0);
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const b of pendingOutput) {
    bytes.set(b, at);
    at += b.byteLength;
  }
  pendingOutput = [];
  post({ type: 'output', bytes }, [bytes.buffer]);
}

function handle(command: VcpuCommand): void {
  try {
    const before = state;
    switch (command.type) {
      case 'resume':
      case 'pause':
      case 'stop':
        state = nextVcpuState(state, command.type);
        if (command.type === 'stop') exitReason ??= { type: 'stopped' };
        break;
      case 'save-state': {
        nextVcpuState(state, 'save-state');
        const saved = vcpu.saveState(command.msrIndices);
        post({ type: 'reply', seq: command.seq, ok: true, value: { vcpu: saved, devices: devices?.save() } });
        return;
      }
      case 'restore-state':
        nextVcpuState(state, 'restore-state');
        vcpu.restoreState(command.vcpu);
        if (command.devices && devices) devices.restore(command.devices);
        break;
      case 'set-boot-state':
        nextVcpuState(state, 'restore-state');
        vcpu.setCpuid(command.cpuid);
        vcpu.setSregs(command.sregs);
        vcpu.setRegs(command.regs);
        break;
      case 'input':
        nextVcpuState(state, 'input');
        devices?.console.enqueueInput(command.bytes);
        break;
      default: {
        const never: never = command;
        throw new Error(`unknown command ${JSON.stringify(never)}`);
      }
    }
    // The state event goes first, so the VMM sees the new state when the reply resolves.
    if (state !== before) post({ type: 'state', state });
    post({ type: 'reply', seq: command.seq, ok: true });
  } catch (error) {
    post({ type: 'reply', seq: command.seq, ok: false, error: encodeVcpuError(error) });
  }
}

function drainCommands(): void {
  for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) handle(m.message as VcpuCommand);
}

function runUntilKickOrExit(): void {
  while (state === 'running') {
    const result = vcpu.runOnce();
    if (result.type === 'kicked') {
      counters.countKick();
      vcpu.setImmediateExit(false);
      return;
    }
    const exit = result.exit;
    counters.countExit(exit.type);
    switch (exit.type) {
      case 'io':
        bus.handle(exit);
        break;
      case 'shutdown':
        // A triple fault: the guest's CPU reset. Our guests never mean it.
        guestExit({ type: 'shutdown' });
        break;
      case 'hlt':
        // Only reached without an in-kernel LAPIC; ours has one, so HLT sleeps in the kernel.
        guestExit({ type: 'failed', exit: 'hlt exit to userspace (no in-kernel irqchip?)' });
        break;
      case 'intr':
        break;
      case 'mmio':
        // No MMIO devices: reads see all ones, writes vanish (as on an empty bus).
        if (!exit.isWrite) exit.data.fill(0xff);
        break;
      case 'fail-entry':
      case 'internal-error':
      case 'system-event':
      case 'debug':
      case 'exception':
      case 'unknown':
        guestExit({ type: 'failed', exit: describeExit(exit) });
        break;
      default: {
        const never: never = exit;
        throw new Error(`unhandled exit ${String(never)}`);
      }
    }
    flushOutput();
  }
}

kvmNative.kvmPrepareKick(data.kickSignal);
post({ type: 'ready', tid: native.gettid() });
let seen = Atomics.load(doorbell, 0);
for (;;) {
  drainCommands();
  if (state === 'exited') break;
  if (state === 'paused') {
    Atomics.wait(doorbell, 0, seen);
    seen = Atomics.load(doorbell, 0);
    continue;
  }
  try {
    runUntilKickOrExit();
  } catch (error) {
    guestExit({ type: 'failed', exit: (error as Error).message });
  }
}
flushOutput();
// kvm_run is unmapped before 'exited' goes out: the VMM may end this thread
// as soon as it hears it, and a mapping left behind keeps the vCPU's file,
// and with it the whole kernel VM (its memory, its kvm-nx-lpage-recovery
// thread), alive for as long as the process lives.
vcpu.close(false);
post({ type: 'exited', reason: exitReason ?? { type: 'stopped' } });
// Nothing keeps this thread alive now: it ends on its own.
port.close();
