// The guest's "done" signal: a write to port 0xf4 (QEMU's isa-debug-exit
// port, so the same guest ends QEMU too) carries the guest's exit status.
import type { PortIoDevice } from '../port-io.js';

export const DEBUG_EXIT_PORT = 0xf4;

export class DebugExit implements PortIoDevice {
  constructor(private readonly onDone: (status: number) => void) {}

  read(): number {
    return 0xffffffff;
  }

  write(_offset: number, _size: number, value: number): void {
    this.onDone(value & 0xff);
  }

  /** Nothing to save: the port only carries the done signal. */
  saveState(): null {
    return null;
  }

  restoreState(): void {}
}
