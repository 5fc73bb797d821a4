// Guest RAM: host memory the VMM maps and hands to KVM. Guest physical and
// host virtual addresses are different branded types, so one cannot be passed
// where the other is meant (vm-memory's GuestAddress vs host pointers).
import { Mapping } from '../../mem/mapping.js';
import { PAGE_SIZE } from '../../native.js';
import { MAX_GUEST_MEMORY_BYTES } from '../machine-config.js';

/** An address in the guest's physical address space. */
export type GuestPhysAddress = number & { readonly __space: 'guest-physical' };
/** An address in this process's virtual address space. */
export type HostAddress = number & { readonly __space: 'host-virtual' };

export const guestPhys = (value: number): GuestPhysAddress => value as GuestPhysAddress;
export const hostAddress = (value: number): HostAddress => value as HostAddress;

/** How guest RAM is backed: private anonymous, or a memfd (shareable, MINOR-fault capable). */
export type GuestMemoryBacking = 'anonymous' | 'memfd';

/** One contiguous piece of guest RAM: a KVM memory slot. */
export interface GuestMemoryRegion {
  slot: number;
  guestPhysAddress: GuestPhysAddress;
  lengthBytes: number;
  hostAddress: HostAddress;
  /** Offset of this region within the guest's memory image (snapshot memory section). */
  imageOffset: number;
}

export class GuestMemory {
  private constructor(
    readonly mapping: Mapping,
    readonly regions: readonly GuestMemoryRegion[],
    readonly backing: GuestMemoryBacking,
  ) {}

  /**
   * RAM of `lengthBytes` from guest physical 0. One region while RAM stays
   * below the 32-bit PCI hole (3 GiB); the micro guest needs far less.
   */
  static create(lengthBytes: number, backing: GuestMemoryBacking = 'anonymous'): GuestMemory {
    if (!Number.isSafeInteger(lengthBytes) || lengthBytes <= 0 || lengthBytes % PAGE_SIZE !== 0) {
      throw new RangeError(`guest memory must be a positive multiple of ${PAGE_SIZE} bytes, got ${lengthBytes}`);
    }
    if (lengthBytes > MAX_GUEST_MEMORY_BYTES) throw new RangeError('guest memory above 3 GiB needs a second region above 4 GiB (not built yet)');
    // noReserve: a 256 MiB guest that touches 16 MiB should not reserve 256 MiB of swap.
    const mapping = backing === 'memfd' ? Mapping.memfd(lengthBytes, 'guest-ram') : Mapping.anonymous(lengthBytes, { noReserve: true });
    const region: GuestMemoryRegion = {
      slot: 0,
      guestPhysAddress: guestPhys(0),
      lengthBytes,
      hostAddress: hostAddress(mapping.address),
      imageOffset: 0,
    };
    return new GuestMemory(mapping, [region], backing);
  }

  get lengthBytes(): number {
    return this.mapping.lengthBytes;
  }

  /** The host address backing `gpa`, checking that `lengthBytes` from there stay in one region. */
  hostAddressOf(gpa: GuestPhysAddress, lengthBytes = 1): HostAddress {
    const region = this.regionOf(gpa, lengthBytes);
    return hostAddress(region.hostAddress + (gpa - region.guestPhysAddress));
  }

  /** A view of guest memory [gpa, gpa + lengthBytes). Touching it faults the pages in. */
  bytes(gpa: GuestPhysAddress, lengthBytes: number): Uint8Array {
    const region = this.regionOf(gpa, lengthBytes);
    return this.mapping.bytes(region.imageOffset + (gpa - region.guestPhysAddress), lengthBytes);
  }

  /**
   * Write guest RAM from the VMM (a loader, device emulation). While a
   * migration tracks writes, the pages written are marked here: KVM's dirty
   * log sees only the guest's own writes, and a page the VMM changed must be
   * sent again like any other.
   */
  write(gpa: GuestPhysAddress, data: Uint8Array): void {
    this.bytes(gpa, data.byteLength).set(data);
    if (this.vmmWrites && data.byteLength > 0) {
      const region = this.regionOf(gpa, data.byteLength);
      const first = Math.floor((region.imageOffset + (gpa - region.guestPhysAddress)) / PAGE_SIZE);
      const last = Math.floor((region.imageOffset + (gpa - region.guestPhysAddress) + data.byteLength - 1) / PAGE_SIZE);
      for (let page = first; page <= last; page++) this.vmmWrites.add(page);
    }
  }

  /** Start (or stop) remembering the pages the VMM writes (write()), for a migration's dirty tracking. */
  trackVmmWrites(on: boolean): void {
    this.vmmWrites = on ? new Set() : undefined;
  }

  /** The image pages the VMM wrote since the last call (while tracking). */
  takeVmmWrites(): number[] {
    if (!this.vmmWrites) return [];
    const pages = [...this.vmmWrites];
    this.vmmWrites.clear();
    return pages;
  }

  private vmmWrites: Set<number> | undefined;

  /** The whole memory image, in imageOffset order (the snapshot's memory section). */
  image(): Uint8Array {
    return this.mapping.bytes();
  }

  unmap(): void {
    this.mapping.unmap();
  }

  private regionOf(gpa: GuestPhysAddress, lengthBytes: number): GuestMemoryRegion {
    for (const region of this.regions) {
      if (gpa >= region.guestPhysAddress && gpa + lengthBytes <= region.guestPhysAddress + region.lengthBytes) return region;
    }
    throw new RangeError(`guest physical [0x${gpa.toString(16)}, +${lengthBytes}) is not in guest RAM`);
  }
}
