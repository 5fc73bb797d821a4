// The one contract every emulated device keeps, so the VMM, the vCPU worker,
// the saved VM state and (later) a migration stream carry devices without
// naming any of them. Each device has three forms:
//
//   config        what the board says to build (ports, IRQ line) — code, not saved
//   live object   a PortIoDevice on vCPU 0's port bus, in that vCPU's worker
//   saved state   JSON-able; read back through the model's own schema, because a
//                 snapshot or a migration stream is untrusted input
//
// A new device (a balloon, say) is one model and one line in board.ts.
import type { PortIoDevice } from './port-io.js';

/** What a device can do to the rest of the machine. */
export interface DeviceIo {
  /** Console bytes the guest wrote. */
  output(bytes: Uint8Array): void;
  /** Set an interrupt line's level (the VMM raises it on the in-kernel irqchip). */
  irq(line: number, level: boolean): void;
  /** The guest signalled it is done, with this status. */
  guestDone(status: number): void;
}

/** A device on the bus, able to save and restore itself. */
export interface LiveDevice<State> extends PortIoDevice {
  saveState(): State;
  restoreState(state: State): void;
}

export interface DeviceModel<Config, State> {
  /** Stable name in saved state ("uart16550"). */
  readonly kind: string;
  /** The ports it claims under `config`. */
  ports(config: Config): { base: number; length: number };
  create(config: Config, io: DeviceIo): LiveDevice<State>;
  stateToJson(state: State): unknown;
  /** Check and build a saved state; throws InvalidVmStateError naming the first bad field under `path`. */
  stateFromJson(json: unknown, path: string): State;
}

/** A device's saved state as the VM state carries it: which device, of which kind, and its state (checked by its model). */
export interface SavedDevice {
  id: string;
  kind: string;
  state: unknown;
}
