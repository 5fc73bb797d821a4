// The micro-VM's board: which devices it has, where, and how their saved
// states travel. vCPU 0's worker builds the live devices on its port bus;
// the VM state carries one SavedDevice per device; a restore (from a
// snapshot, a page server or a migration stream) gives each device back its
// own state, checked by its own model.
import { InvalidVmStateError } from '../errors.js';
import { array, field, object, string } from '../persist/schema.js';
import { debugExitModel } from './debug-exit/debug-exit-device.js';
import type { DeviceIo, DeviceModel, LiveDevice, SavedDevice } from './device.js';
import type { PortIoBus } from './port-io.js';
import { serialModel } from './serial/serial-device.js';
import type { Uart16550 } from './serial/uart16550.js';

interface BoardSlot<Config, State> {
  /** The device's name in saved state: one per board. */
  id: string;
  model: DeviceModel<Config, State>;
  config: Config;
}

/** A slot's types checked where it is written; the board holds them as one list. */
function slot<Config, State>(id: string, model: DeviceModel<Config, State>, config: Config): BoardSlot<unknown, unknown> {
  return { id, model, config } as BoardSlot<unknown, unknown>;
}

/** COM1 at 0x3f8 (IRQ 4) is the console; the done port at 0xf4 is QEMU's isa-debug-exit, so the same guest ends QEMU too. */
export const MICRO_BOARD: readonly BoardSlot<unknown, unknown>[] = [
  slot('com1', serialModel, { port: 0x3f8, irq: 4 }),
  slot('debug-exit', debugExitModel, { port: 0xf4 }),
];

/** The device the console's input goes to. */
export const CONSOLE_DEVICE_ID = 'com1';

/** The live devices of a board, on a bus. */
export class BoardDevices {
  private readonly live = new Map<string, { slot: BoardSlot<unknown, unknown>; device: LiveDevice<unknown> }>();

  constructor(bus: PortIoBus, io: DeviceIo, board: readonly BoardSlot<unknown, unknown>[] = MICRO_BOARD) {
    for (const slot of board) {
      const device = slot.model.create(slot.config, io);
      const { base, length } = slot.model.ports(slot.config);
      bus.register(base, length, device);
      this.live.set(slot.id, { slot, device });
    }
  }

  /** The console device (input goes there). */
  get console(): Uart16550 {
    return this.live.get(CONSOLE_DEVICE_ID)!.device as unknown as Uart16550;
  }

  save(): SavedDevice[] {
    return [...this.live.values()].map(({ slot, device }) => ({ id: slot.id, kind: slot.model.kind, state: device.saveState() }));
  }

  /** Give each device its saved state (already checked by devicesFromJson). A device the saved state lacks keeps its power-on state. */
  restore(saved: readonly SavedDevice[]): void {
    for (const entry of saved) {
      const live = this.live.get(entry.id);
      if (!live || live.slot.model.kind !== entry.kind) throw new InvalidVmStateError(`devices.${entry.id}`, `is a ${entry.kind}, which this board has not got`);
      live.device.restoreState(entry.state);
    }
  }
}

export function devicesToJson(saved: readonly SavedDevice[], board: readonly BoardSlot<unknown, unknown>[] = MICRO_BOARD): unknown[] {
  return saved.map((entry) => {
    const slot = board.find((s) => s.id === entry.id && s.model.kind === entry.kind);
    if (!slot) throw new InvalidVmStateError(`devices.${entry.id}`, `is a ${entry.kind}, which this board has not got`);
    return { id: entry.id, kind: entry.kind, state: slot.model.stateToJson(entry.state) };
  });
}

/** Check the saved devices against the board: each id once, of the kind the board has there, its state through its model's schema. */
export function devicesFromJson(json: unknown, board: readonly BoardSlot<unknown, unknown>[] = MICRO_BOARD): SavedDevice[] {
  const entries = array(json, 'devices');
  if (entries.length > board.length) throw new InvalidVmStateError('devices', `holds ${entries.length} devices; the board has ${board.length}`);
  const seen = new Set<string>();
  return entries.map((value, i) => {
    const path = `devices[${i}]`;
    const entry = object(value, path);
    const id = string(field(entry, 'id'), `${path}.id`, 64);
    const kind = string(field(entry, 'kind'), `${path}.kind`, 64);
    const slot = board.find((s) => s.id === id);
    if (!slot) throw new InvalidVmStateError(`${path}.id`, `is ${JSON.stringify(id)}; the board's devices are ${board.map((s) => s.id).join(', ')}`);
    if (slot.model.kind !== kind) throw new InvalidVmStateError(`${path}.kind`, `is ${JSON.stringify(kind)}; ${id} is a ${slot.model.kind}`);
    if (seen.has(id)) throw new InvalidVmStateError(`${path}.id`, `is ${JSON.stringify(id)}, which an earlier device has too`);
    seen.add(id);
    return { id, kind, state: slot.model.stateFromJson(field(entry, 'state'), `${path}.state`) };
  });
}

/** VM state versions 1 and 2 carried only the UART, as `uart` (null: never saved). */
export function devicesFromLegacyUart(json: unknown, version: number): SavedDevice[] {
  if (json === null || json === undefined) return [];
  const state = version === 1 ? serialModel.stateFromJsonV1(json, 'uart') : serialModel.stateFromJson(json, 'uart');
  return [{ id: CONSOLE_DEVICE_ID, kind: serialModel.kind, state }];
}
