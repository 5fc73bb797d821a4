// Port I/O dispatch: devices claim port ranges; an I/O exit is handed to the
// device that owns its port, one item at a time (a `rep outsb` exit carries
// `count` items).
import type { VmExit } from '../kvm/exits.js';

export interface PortIoDevice {
  /** Read `size` bytes at `offset` from the device's base port. */
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
}

interface Claim {
  base: number;
  length: number;
  device: PortIoDevice;
}

export class PortIoBus {
  private readonly claims: Claim[] = [];
  /** Accesses to ports nobody claims (reads see all ones), per port: for diagnostics. */
  readonly unclaimed = new Map<number, number>();

  register(base: number, length: number, device: PortIoDevice): void {
    for (const c of this.claims) {
      if (base < c.base + c.length && c.base < base + length) throw new RangeError(`ports 0x${base.toString(16)}+${length} overlap a device at 0x${c.base.toString(16)}`);
    }
    this.claims.push({ base, length, device });
  }

  handle(exit: Extract<VmExit, { type: 'io' }>): void {
    const claim = this.claims.find((c) => exit.port >= c.base && exit.port < c.base + c.length);
    const view = new DataView(exit.data.buffer, exit.data.byteOffset, exit.data.byteLength);
    for (let i = 0; i < exit.count; i++) {
      const at = i * exit.size;
      if (exit.direction === 'out') {
        const value = exit.size === 1 ? view.getUint8(at) : exit.size === 2 ? view.getUint16(at, true) : view.getUint32(at, true);
        if (claim) claim.device.write(exit.port - claim.base, exit.size, value);
        else this.unclaimed.set(exit.port, (this.unclaimed.get(exit.port) ?? 0) + 1);
      } else {
        let value = 0xffffffff;
        if (claim) value = claim.device.read(exit.port - claim.base, exit.size);
        else this.unclaimed.set(exit.port, (this.unclaimed.get(exit.port) ?? 0) + 1);
        if (exit.size === 1) view.setUint8(at, value & 0xff);
        else if (exit.size === 2) view.setUint16(at, value & 0xffff, true);
        else view.setUint32(at, value >>> 0, true);
      }
    }
  }
}
