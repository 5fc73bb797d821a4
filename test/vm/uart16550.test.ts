import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Uart16550 } from '../../src/vm/devices/serial/uart16550.js';
import { nextVcpuState } from '../../src/vm/vcpu-state-machine.js';
import { InvalidStateTransitionError } from '../../src/vm/errors.js';

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
});
