import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteQueue } from '../../src/vm/devices/serial/byte-queue.js';
import { SERIAL_INPUT_LIMIT_BYTES, Uart16550 } from '../../src/vm/devices/serial/uart16550.js';
import { nextVcpuState, reportedVcpuState } from '../../src/vm/vcpu-state-machine.js';
import { InvalidStateTransitionError, SerialInputFullError } from '../../src/vm/errors.js';

function uart(): { dev: Uart16550; out: number[]; irq: boolean[] } {
  const out: number[] = [];
  const irq: boolean[] = [];
  const dev = new Uart16550({ output: (b) => out.push(...b), interrupt: (l) => irq.push(l) });
  return { dev, out, irq };
}

describe('the 16550 UART', () => {
  test('THR writes come out at once and THR always reads empty', () => {
    const { dev, out } = uart();
    assert.equal(dev.read(5, 1) & 0x60, 0x60);
    for (const b of Buffer.from('ok\n')) dev.write(0, 1, b);
    assert.equal(Buffer.from(out).toString(), 'ok\n');
  });

  test('DLAB switches offsets 0 and 1 to the divisor latch', () => {
    const { dev, out } = uart();
    dev.write(3, 1, 0x80);
    dev.write(0, 1, 3);
    dev.write(1, 1, 0);
    assert.equal(dev.read(0, 1), 3);
    dev.write(3, 1, 0x03);
    assert.equal(out.length, 0);
  });

  test('input beyond the 16-byte FIFO waits, and data-ready follows the FIFO', () => {
    const { dev } = uart();
    dev.enqueueInput(new Uint8Array(20).map((_, i) => 65 + i));
    const got: number[] = [];
    while (dev.read(5, 1) & 1) got.push(dev.read(0, 1));
    assert.equal(got.length, 20);
    assert.equal(got[19], 65 + 19);
  });

  test('a received byte raises IRQ 4 when enabled, and reading it lowers it', () => {
    const { dev, irq } = uart();
    dev.write(4, 1, 0x08);
    dev.write(1, 1, 0x01);
    dev.enqueueInput(Uint8Array.of(0x71));
    assert.deepEqual(irq, [true]);
    assert.equal(dev.read(2, 1) & 0x0f, 0x04);
    dev.read(0, 1);
    assert.deepEqual(irq, [true, false]);
  });

  test('saved state restores into a new UART, queued input included', () => {
    const a = uart();
    a.dev.write(7, 1, 0x5a);
    a.dev.enqueueInput(new Uint8Array(18).fill(0x61));
    const state = structuredClone(a.dev.saveState());
    const b = uart();
    b.dev.restoreState(state);
    assert.equal(b.dev.read(7, 1), 0x5a);
    let n = 0;
    while (b.dev.read(5, 1) & 1) (b.dev.read(0, 1), n++);
    assert.equal(n, 18);
  });
});

describe('the vCPU state machine', () => {
  test('paused resumes to running, running pauses, and save is allowed only while paused', () => {
    assert.equal(nextVcpuState('paused', 'resume'), 'running');
    assert.equal(nextVcpuState('running', 'pause'), 'paused');
    assert.equal(nextVcpuState('paused', 'save-state'), 'paused');
    assert.throws(() => nextVcpuState('running', 'save-state'), InvalidStateTransitionError);
  });

  test('an exited vCPU refuses everything', () => {
    for (const r of ['resume', 'pause', 'save-state', 'stop'] as const) assert.throws(() => nextVcpuState('exited', r), InvalidStateTransitionError);
  });

  test('the main thread\'s copy follows a worker\'s report only along the table', () => {
    assert.equal(reportedVcpuState('paused', 'running'), 'running');
    assert.equal(reportedVcpuState('running', 'exited'), 'exited');
    assert.equal(reportedVcpuState('paused', 'exited'), 'exited');
    // The 'exited' event after the state event that said so.
    assert.equal(reportedVcpuState('exited', 'exited'), 'exited');
    assert.throws(() => reportedVcpuState('exited', 'running'), (e: unknown) => e instanceof InvalidStateTransitionError && e.from === 'exited');
    assert.throws(() => reportedVcpuState('exited', 'paused'), InvalidStateTransitionError);
  });
});

describe('the UART\'s input backlog', () => {
  test('a byte queue keeps order across its blocks and copies out what is queued', () => {
    const q = new ByteQueue();
    const bytes = new Uint8Array(200_000).map((_, i) => i * 7);
    q.push(bytes.subarray(0, 70_000));
    q.push(bytes.subarray(70_000));
    for (let i = 0; i < 1000; i++) assert.equal(q.shift(), bytes[i]);
    assert.equal(q.lengthBytes, 199_000);
    assert.deepEqual(q.toBytes(), bytes.subarray(1000));
    let n = 1000;
    for (let b = q.shift(); b !== undefined; b = q.shift()) assert.equal(b, bytes[n++]);
    assert.equal(n, bytes.length);
    q.push(Uint8Array.of(9));
    assert.deepEqual([q.shift(), q.shift()], [9, undefined]);
  });

  test('a saved backlog of 1 MiB restores (no spread onto the stack) and the guest reads it back in order, quickly', () => {
    const a = uart();
    const input = new Uint8Array(SERIAL_INPUT_LIMIT_BYTES).map((_, i) => (i * 31) & 0xff);
    a.dev.enqueueInput(input);
    const state = structuredClone(a.dev.saveState());
    assert.equal(state.rx.byteLength, SERIAL_INPUT_LIMIT_BYTES);
    const b = uart();
    b.dev.restoreState(state);
    assert.equal(b.dev.queuedInputBytes, SERIAL_INPUT_LIMIT_BYTES);
    const started = performance.now();
    let n = 0;
    while (b.dev.read(5, 1) & 1) {
      const byte = b.dev.read(0, 1);
      if (byte !== input[n]) assert.fail(`byte ${n} is ${byte}, want ${input[n]}`);
      n++;
    }
    assert.equal(n, SERIAL_INPUT_LIMIT_BYTES);
    // A number[] shifted a byte at a time takes minutes here (each shift moves every queued byte).
    assert.ok(performance.now() - started < 2000, `read 1 MiB in ${(performance.now() - started).toFixed(0)} ms`);
  });

  test('input that would take the queue past 1 MiB is refused whole, and nothing of it is queued', () => {
    const { dev } = uart();
    dev.enqueueInput(new Uint8Array(SERIAL_INPUT_LIMIT_BYTES - 10));
    assert.throws(() => dev.enqueueInput(new Uint8Array(11)), (e: unknown) =>
      e instanceof SerialInputFullError && e.code === 'ESERIALFULL' && e.refusedBytes === 11 && e.queuedBytes === SERIAL_INPUT_LIMIT_BYTES - 10 && e.limitBytes === SERIAL_INPUT_LIMIT_BYTES);
    assert.equal(dev.queuedInputBytes, SERIAL_INPUT_LIMIT_BYTES - 10);
    dev.enqueueInput(new Uint8Array(10));
    assert.equal(dev.queuedInputBytes, SERIAL_INPUT_LIMIT_BYTES);
  });
});
