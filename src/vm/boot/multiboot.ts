// Multiboot v1 loader: find the header, load the ELF32 (or a.out-kludge)
// image, write the multiboot information structure, and give the CPU state
// the specification requires at entry. Parsing is pure over the image bytes.
//
// Guest physical layout the loader uses below the image (all in low RAM):
//   0x8000  multiboot_info (88 bytes)       0x8100  memory map (4 entries)
//   0x8200  boot loader name                0x8300  command line (to 0x9000)
//   0x100000+ the image's segments (wherever its headers say, at or above 1 MiB)
import { InvalidGuestImageError, GuestMemoryTooSmallError } from '../errors.js';
import type { KvmRegs, KvmSegment, KvmSregs } from '../kvm/ioctls/structs.js';
import { guestPhys, type GuestMemory, type GuestPhysAddress } from '../memory/guest-memory.js';

export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
/** EAX at entry: the loader's magic. */
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
/** The header must lie wholly in the image's first 8192 bytes, 32-bit aligned. */
export const MULTIBOOT_SEARCH_BYTES = 8192;

/** multiboot header flags (low 16 bits: required; the loader must refuse unknown ones). */
export const MULTIBOOT_PAGE_ALIGN = 1 << 0;
export const MULTIBOOT_MEMORY_INFO = 1 << 1;
export const MULTIBOOT_VIDEO_MODE = 1 << 2;
export const MULTIBOOT_AOUT_KLUDGE = 1 << 16;

/** multiboot_info.flags bits this loader fills. */
export const MULTIBOOT_INFO_MEMORY = 1 << 0;
export const MULTIBOOT_INFO_CMDLINE = 1 << 2;
export const MULTIBOOT_INFO_MEM_MAP = 1 << 6;
export const MULTIBOOT_INFO_BOOT_LOADER_NAME = 1 << 9;

export const MULTIBOOT_INFO_ADDRESS = guestPhys(0x8000);
const MMAP_ADDRESS = 0x8100;
const LOADER_NAME_ADDRESS = 0x8200;
const CMDLINE_ADDRESS = 0x8300;
export const MULTIBOOT_CMDLINE_MAX_BYTES = 0x9000 - CMDLINE_ADDRESS - 1;
const LOADER_NAME = 'userfault';

/** One piece of the image to copy into guest memory; bytes past data up to memBytes are zero (bss). */
export interface LoadSegment {
  guestPhysAddress: GuestPhysAddress;
  data: Uint8Array;
  memBytes: number;
}

export interface MultibootImage {
  headerOffset: number;
  flags: number;
  entry: GuestPhysAddress;
  segments: LoadSegment[];
  /** One past the last byte any segment occupies. */
  endAddress: number;
}

/** Parse a multiboot v1 image. Throws InvalidGuestImageError naming what is wrong and where. */
export function parseMultibootImage(image: Uint8Array, path?: string): MultibootImage {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const fail = (reason: string, offset?: number): never => {
    throw new InvalidGuestImageError(reason, offset, path);
  };
  let headerOffset = -1;
  const searchEnd = Math.min(image.byteLength, MULTIBOOT_SEARCH_BYTES) - 12;
  for (let at = 0; at <= searchEnd; at += 4) {
    if (view.getUint32(at, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = view.getUint32(at + 4, true);
    const checksum = view.getUint32(at + 8, true);
    if (((MULTIBOOT_HEADER_MAGIC + flags + checksum) >>> 0) === 0) {
      headerOffset = at;
      break;
    }
  }
  if (headerOffset < 0) fail(`no multiboot v1 header (magic 0x1badb002 with a valid checksum) in the first ${MULTIBOOT_SEARCH_BYTES} bytes`);
  const flags = view.getUint32(headerOffset + 4, true);
  const unknownRequired = flags & 0xffff & ~(MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO | MULTIBOOT_VIDEO_MODE);
  if (unknownRequired) fail(`the header requires unknown features 0x${unknownRequired.toString(16)}`, headerOffset + 4);

  if (flags & MULTIBOOT_AOUT_KLUDGE) return parseAoutKludge(view, image, headerOffset, flags, fail);
  return parseElf32(view, image, headerOffset, flags, fail);
}

function parseAoutKludge(view: DataView, image: Uint8Array, headerOffset: number, flags: number, fail: (r: string, o?: number) => never): MultibootImage {
  if (headerOffset + 32 > image.byteLength) fail('multiboot header with the a.out kludge is truncated', headerOffset);
  const headerAddr = view.getUint32(headerOffset + 12, true);
  const loadAddr = view.getUint32(headerOffset + 16, true);
  const loadEndAddr = view.getUint32(headerOffset + 20, true);
  const bssEndAddr = view.getUint32(headerOffset + 24, true);
  const entry = view.getUint32(headerOffset + 28, true);
  if (loadAddr > headerAddr) fail('load_addr lies above header_addr', headerOffset + 16);
  const fileStart = headerOffset - (headerAddr - loadAddr);
  if (fileStart < 0) fail('header_addr - load_addr points before the file', headerOffset + 12);
  const loadBytes = loadEndAddr === 0 ? image.byteLength - fileStart : loadEndAddr - loadAddr;
  if (loadBytes < 0 || fileStart + loadBytes > image.byteLength) fail('load_end_addr lies past the end of the file', headerOffset + 20);
  const memBytes = bssEndAddr === 0 ? loadBytes : bssEndAddr - loadAddr;
  if (memBytes < loadBytes) fail('bss_end_addr lies below load_end_addr', headerOffset + 24);
  const segment: LoadSegment = { guestPhysAddress: guestPhys(loadAddr), data: image.subarray(fileStart, fileStart + loadBytes), memBytes };
  return { headerOffset, flags, entry: guestPhys(entry), segments: [segment], endAddress: loadAddr + memBytes };
}

const ELFCLASS32 = 1;
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const ET_EXEC = 2;
const EM_386 = 3;
const PT_LOAD = 1;

function parseElf32(view: DataView, image: Uint8Array, headerOffset: number, flags: number, fail: (r: string, o?: number) => never): MultibootImage {
  if (image.byteLength < 52) fail('too short for an ELF header', 0);
  if (view.getUint32(0, false) !== 0x7f454c46) fail('not an ELF file, and the multiboot header does not ask for the a.out kludge (flag 16)', 0);
  const elfClass = view.getUint8(4);
  if (elfClass === ELFCLASS64) fail('64-bit ELF: a multiboot v1 kernel must be ELF32 (enter long mode from inside)', 4);
  if (elfClass !== ELFCLASS32) fail(`unknown ELF class ${elfClass}`, 4);
  if (view.getUint8(5) !== ELFDATA2LSB) fail('not a little-endian ELF', 5);
  if (view.getUint16(16, true) !== ET_EXEC) fail('not an executable ELF (e_type)', 16);
  if (view.getUint16(18, true) !== EM_386) fail('not an i386 ELF (e_machine)', 18);
  const entry = view.getUint32(24, true);
  const phoff = view.getUint32(28, true);
  const phentsize = view.getUint16(42, true);
  const phnum = view.getUint16(44, true);
  if (phentsize < 32) fail(`e_phentsize ${phentsize} is too small`, 42);
  if (phnum === 0) fail('no program headers', 44);
  if (phoff + phnum * phentsize > image.byteLength) fail('program headers lie past the end of the file', 28);
  const segments: LoadSegment[] = [];
  let endAddress = 0;
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (view.getUint32(at, true) !== PT_LOAD) continue;
    const offset = view.getUint32(at + 4, true);
    const paddr = view.getUint32(at + 12, true);
    const filesz = view.getUint32(at + 16, true);
    const memsz = view.getUint32(at + 20, true);
    if (offset + filesz > image.byteLength) fail(`segment ${i} lies past the end of the file`, at + 4);
    if (memsz < filesz) fail(`segment ${i} has p_memsz < p_filesz`, at + 20);
    // Multiboot loads by physical address (p_paddr), as GRUB and QEMU do.
    segments.push({ guestPhysAddress: guestPhys(paddr), data: image.subarray(offset, offset + filesz), memBytes: memsz });
    endAddress = Math.max(endAddress, paddr + memsz);
  }
  if (segments.length === 0) fail('no PT_LOAD segment', phoff);
  return { headerOffset, flags, entry: guestPhys(entry), segments, endAddress };
}

/** The memory map the loader reports: BIOS-like low memory, a hole, then RAM from 1 MiB. */
export function multibootMemoryMap(memoryBytes: number): { base: number; lengthBytes: number; type: 1 | 2 }[] {
  return [
    { base: 0, lengthBytes: 0x9fc00, type: 1 },
    { base: 0x9fc00, lengthBytes: 0x400, type: 2 },
    { base: 0xf0000, lengthBytes: 0x10000, type: 2 },
    { base: 0x100000, lengthBytes: memoryBytes - 0x100000, type: 1 },
  ];
}

/**
 * The multiboot_info structure and what it points at, as (address, bytes)
 * pieces to write into guest memory. Pure.
 */
export function buildMultibootInfo(memoryBytes: number, cmdline: string): { guestPhysAddress: GuestPhysAddress; data: Uint8Array }[] {
  const cmd = new TextEncoder().encode(cmdline);
  if (cmd.byteLength > MULTIBOOT_CMDLINE_MAX_BYTES) throw new RangeError(`command line longer than ${MULTIBOOT_CMDLINE_MAX_BYTES} bytes`);
  const map = multibootMemoryMap(memoryBytes);
  const mmap = new Uint8Array(map.length * 24);
  const mv = new DataView(mmap.buffer);
  map.forEach((e, i) => {
    mv.setUint32(i * 24, 20, true); // size of the entry, not counting this field
    mv.setBigUint64(i * 24 + 4, BigInt(e.base), true);
    mv.setBigUint64(i * 24 + 12, BigInt(e.lengthBytes), true);
    mv.setUint32(i * 24 + 20, e.type, true);
  });
  const info = new Uint8Array(88);
  const iv = new DataView(info.buffer);
  iv.setUint32(0, MULTIBOOT_INFO_MEMORY | MULTIBOOT_INFO_CMDLINE | MULTIBOOT_INFO_MEM_MAP | MULTIBOOT_INFO_BOOT_LOADER_NAME, true);
  iv.setUint32(4, 640, true); // mem_lower, KiB from 0
  iv.setUint32(8, Math.floor((memoryBytes - 0x100000) / 1024), true); // mem_upper, KiB from 1 MiB
  iv.setUint32(16, CMDLINE_ADDRESS, true);
  iv.setUint32(44, mmap.byteLength, true);
  iv.setUint32(48, MMAP_ADDRESS, true);
  iv.setUint32(64, LOADER_NAME_ADDRESS, true);
  return [
    { guestPhysAddress: MULTIBOOT_INFO_ADDRESS, data: info },
    { guestPhysAddress: guestPhys(MMAP_ADDRESS), data: mmap },
    { guestPhysAddress: guestPhys(LOADER_NAME_ADDRESS), data: new TextEncoder().encode(LOADER_NAME + '\0') },
    { guestPhysAddress: guestPhys(CMDLINE_ADDRESS), data: concat(cmd, new Uint8Array(1)) },
  ];
}

/** Copy the image and the info structure into guest memory; returns where to start. */
export function loadMultiboot(memory: GuestMemory, image: MultibootImage, cmdline: string): { entry: GuestPhysAddress; infoAddress: GuestPhysAddress } {
  if (image.endAddress > memory.lengthBytes) throw new GuestMemoryTooSmallError(image.endAddress, memory.lengthBytes);
  for (const segment of image.segments) {
    if (segment.guestPhysAddress < 0x100000) throw new InvalidGuestImageError(`a segment loads at 0x${segment.guestPhysAddress.toString(16)}, below 1 MiB`);
    const target = memory.bytes(segment.guestPhysAddress, segment.memBytes);
    target.set(segment.data);
    target.fill(0, segment.data.byteLength);
  }
  for (const piece of buildMultibootInfo(memory.lengthBytes, cmdline)) memory.write(piece.guestPhysAddress, piece.data);
  return { entry: image.entry, infoAddress: MULTIBOOT_INFO_ADDRESS };
}

const flatCode: Omit<KvmSegment, 'selector'> = { base: 0n, limit: 0xffffffff, type: 0xb, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0 };
const flatData: Omit<KvmSegment, 'selector'> = { ...flatCode, type: 0x3 };

/**
 * The machine state at a multiboot entry: 32-bit protected mode, paging off,
 * flat 4 GiB segments, interrupts off, EAX = magic, EBX = info address.
 * `sregs` is the vCPU's reset state, edited here.
 */
export function multibootEntryState(entry: GuestPhysAddress, infoAddress: GuestPhysAddress, sregs: KvmSregs): { regs: KvmRegs; sregs: KvmSregs } {
  const code: KvmSegment = { ...flatCode, selector: 0x08 };
  const data: KvmSegment = { ...flatData, selector: 0x10 };
  const next: KvmSregs = { ...sregs, cs: code, ds: data, es: data, fs: data, gs: data, ss: data };
  next.cr0 = (sregs.cr0 | 0x1n) & ~0x80000000n; // PE on, PG off
  const zero = 0n;
  const regs: KvmRegs = {
    rax: BigInt(MULTIBOOT_BOOTLOADER_MAGIC), rbx: BigInt(infoAddress), rcx: zero, rdx: zero,
    rsi: zero, rdi: zero, rsp: zero, rbp: zero,
    r8: zero, r9: zero, r10: zero, r11: zero, r12: zero, r13: zero, r14: zero, r15: zero,
    rip: BigInt(entry),
    rflags: 0x2n, // bit 1 is reserved and always set; IF and VM clear
  };
  return { regs, sregs: next };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}
