// The 16550 UART as a device (device.ts): its config, its live object
// (uart16550.ts) and its saved state's schema.
import { InvalidVmStateError } from '../../errors.js';
import { base64, boolean, field, integerIn, object, array, describe } from '../../persist/schema.js';
import type { DeviceModel } from '../device.js';
import { SERIAL_INPUT_LIMIT_BYTES, Uart16550, type UartState } from './uart16550.js';

export interface SerialConfig {
  /** First of its eight ports (COM1: 0x3f8). */
  port: number;
  /** Its interrupt line (COM1: 4). */
  irq: number;
}

const REGISTERS = ['dll', 'dlm', 'ier', 'lcr', 'mcr', 'fcr', 'scr', 'lsrErrors'] as const;

type UartStateJson = Omit<UartState, 'rx'> & { rx: string };

export const serialModel: DeviceModel<SerialConfig, UartState> & {
  /** VM state version 1 stored the queued input as an array of numbers. */
  stateFromJsonV1(json: unknown, path: string): UartState;
} = {
  kind: 'uart16550',
  ports: (config) => ({ base: config.port, length: 8 }),
  create: (config, io) => new Uart16550({ output: (bytes) => io.output(bytes), interrupt: (level) => io.irq(config.irq, level) }),
  stateToJson: (state): UartStateJson => ({ ...state, rx: Buffer.from(state.rx.buffer, state.rx.byteOffset, state.rx.byteLength).toString('base64') }),
  stateFromJson(json, path) {
    const u = object(json, path);
    const rx = base64(field(u, 'rx'), `${path}.rx`, Math.ceil(SERIAL_INPUT_LIMIT_BYTES / 3) * 4);
    if (rx.byteLength > SERIAL_INPUT_LIMIT_BYTES) throw new InvalidVmStateError(`${path}.rx`, `holds ${rx.byteLength} bytes; at most ${SERIAL_INPUT_LIMIT_BYTES} may wait`);
    return { ...registers(u, path), thrEmptyPending: boolean(field(u, 'thrEmptyPending'), `${path}.thrEmptyPending`), rx };
  },
  stateFromJsonV1(json, path) {
    const u = object(json, path);
    const bytes = array(field(u, 'rx'), `${path}.rx`);
    if (bytes.length > SERIAL_INPUT_LIMIT_BYTES) throw new InvalidVmStateError(`${path}.rx`, `holds ${bytes.length} bytes; at most ${SERIAL_INPUT_LIMIT_BYTES} may wait`);
    const rx = new Uint8Array(bytes.length);
    bytes.forEach((b, i) => {
      if (!Number.isInteger(b) || (b as number) < 0 || (b as number) > 0xff) throw new InvalidVmStateError(`${path}.rx[${i}]`, `is ${describe(b)}, not a byte`);
      rx[i] = b as number;
    });
    return { ...registers(u, path), thrEmptyPending: boolean(field(u, 'thrEmptyPending'), `${path}.thrEmptyPending`), rx };
  },
};

function registers(u: Record<string, unknown>, path: string): Record<(typeof REGISTERS)[number], number> {
  const out = {} as Record<(typeof REGISTERS)[number], number>;
  for (const name of REGISTERS) out[name] = integerIn(field(u, name), `${path}.${name}`, 0, 0xff, 'a byte');
  return out;
}
