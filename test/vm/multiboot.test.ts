import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { buildMultibootInfo, multibootEntryState, parseMultibootImage, MULTIBOOT_BOOTLOADER_MAGIC, MULTIBOOT_INFO_ADDRESS } from '../../src/vm/boot/multiboot.js';
import { InvalidGuestImageError } from '../../src/vm/errors.js';
import { ensureBuiltinGuest } from '../../src/vm/boot/builtin-guest.js';
import { decodeSregs, encodeSregs } from '../../src/vm/kvm/ioctls/structs.js';

/** A minimal multiboot ELF32: one PT_LOAD of `body` at 1 MiB, header at offset 84. */
function tinyElf(options: { elfClass?: number; flags?: number; checksumDelta?: number } = {}): Uint8Array {
  const image = new Uint8Array(128);
  const v = new DataView(image.buffer);
  image.set([0x7f, 0x45, 0x4c, 0x46, options.elfClass ?? 1, 1, 1]);
  v.setUint16(16, 2, true);
  v.setUint16(18, 3, true);
  v.setUint32(24, 0x100054, true);
  v.setUint32(28, 52, true);
  v.setUint16(42, 32, true);
  v.setUint16(44, 1, true);
  v.setUint32(52, 1, true); // PT_LOAD
  v.setUint32(56, 0, true);
  v.setUint32(60, 0x100000, true);
  v.setUint32(64, 0x100000, true);
  v.setUint32(68, 128, true);
  v.setUint32(72, 4096, true);
  const flags = options.flags ?? 3;
  v.setUint32(84, 0x1badb002, true);
  v.setUint32(88, flags, true);
  v.setUint32(92, (-(0x1badb002 + flags) + (options.checksumDelta ?? 0)) >>> 0, true);
  return image;
}

describe('the multiboot v1 loader', () => {
  test('an ELF32 image gives its entry point and one segment with its bss', () => {
    const image = parseMultibootImage(tinyElf());
    assert.equal(image.headerOffset, 84);
    assert.equal(image.entry, 0x100054);
    assert.equal(image.segments.length, 1);
    assert.equal(image.segments[0]!.guestPhysAddress, 0x100000);
    assert.equal(image.segments[0]!.data.byteLength, 128);
    assert.equal(image.segments[0]!.memBytes, 4096);
    assert.equal(image.endAddress, 0x101000);
  });

  test('a header with a bad checksum is not a header', () => {
    assert.throws(() => parseMultibootImage(tinyElf({ checksumDelta: 1 })), (e: unknown) => e instanceof InvalidGuestImageError && /no multiboot v1 header/.test(e.message));
  });

  test('a 64-bit ELF is refused with the reason', () => {
    assert.throws(() => parseMultibootImage(tinyElf({ elfClass: 2 })), (e: unknown) => e instanceof InvalidGuestImageError && e.offset === 4 && /64-bit/.test(e.message));
  });

  test('an unknown required feature bit is refused', () => {
    assert.throws(() => parseMultibootImage(tinyElf({ flags: 3 | 1 << 5 })), (e: unknown) => e instanceof InvalidGuestImageError && /unknown features 0x20/.test(e.message));
  });

  test('every truncation of a valid image is refused or parsed, never a crash', () => {
    const full = tinyElf();
    for (let length = 0; length < full.byteLength; length++) {
      try {
        parseMultibootImage(full.subarray(0, length));
      } catch (error) {
        assert.ok(error instanceof InvalidGuestImageError, `length ${length}: ${String(error)}`);
      }
    }
  });

  test('the info structure reports memory, the command line and a memory map', () => {
    const pieces = buildMultibootInfo(32 << 20, 'workload=idle');
    const info = pieces.find((p) => p.guestPhysAddress === MULTIBOOT_INFO_ADDRESS)!;
    const v = new DataView(info.data.buffer);
    assert.equal(v.getUint32(0, true) & 0b1000101, 0b1000101); // mem, cmdline, mmap
    assert.equal(v.getUint32(4, true), 640);
    assert.equal(v.getUint32(8, true), 31 * 1024);
    const cmdAddress = v.getUint32(16, true);
    const cmd = pieces.find((p) => p.guestPhysAddress === cmdAddress)!;
    assert.equal(Buffer.from(cmd.data).toString('latin1'), 'workload=idle\0');
    const mmap = pieces.find((p) => p.guestPhysAddress === v.getUint32(48, true))!;
    assert.equal(mmap.data.byteLength, v.getUint32(44, true));
  });

  test('the entry state is flat 32-bit protected mode with the magic in EAX', () => {
    const reset = decodeSregs(new Uint8Array(312));
    const { regs, sregs } = multibootEntryState(0x100060 as never, MULTIBOOT_INFO_ADDRESS, reset);
    assert.equal(regs.rax, BigInt(MULTIBOOT_BOOTLOADER_MAGIC));
    assert.equal(regs.rbx, BigInt(MULTIBOOT_INFO_ADDRESS));
    assert.equal(regs.rip, 0x100060n);
    assert.equal(sregs.cr0 & 1n, 1n);
    assert.equal(sregs.cs.db, 1);
    assert.equal(sregs.cs.limit, 0xffffffff);
    assert.deepEqual(decodeSregs(encodeSregs(sregs)), sregs);
  });

  test('the built-in micro guest parses', (t) => {
    const guest = ensureBuiltinGuest();
    if (guest.path === undefined) return t.skip(guest.reason);
    const image = parseMultibootImage(readFileSync(guest.path));
    assert.equal(image.segments[0]!.guestPhysAddress, 0x100000);
    assert.ok(image.endAddress < 0x180000, 'the image stays below the generation table');
  });
});
