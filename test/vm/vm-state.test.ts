// The VM state schema (persist/vm-state.ts): a snapshot's state is
// untrusted input. Every malformed field is an InvalidVmStateError naming
// its path, never a TypeError or RangeError, and never reaches KVM. Pure:
// no KVM needed (the snapshot files here are written with the format's
// writer and refused before any VM exists).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { KVM_SIZE } from '../../src/vm/kvm/ioctls/constants.js';
import { irqchipBuffer, SAVED_STRUCTS } from '../../src/vm/kvm/ioctls/structs.js';
import { InvalidVmSnapshotError, InvalidVmStateError, VmSnapshotNotFoundError } from '../../src/vm/errors.js';
import { openVmSnapshot } from '../../src/vm/persist/vm-snapshot.js';
import { vmStateFromJson, vmStateToJson } from '../../src/vm/persist/vm-state.js';
import { tempDir } from './helpers.js';
import { legacyUartJson, validVmState, writeVmStateSnapshot } from './vm-state-fixtures.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function validJson(): Json {
  return JSON.parse(JSON.stringify(vmStateToJson(validVmState()))) as Json;
}

const half = (b64: string): string => Buffer.from(b64, 'base64').subarray(0, Math.floor(Buffer.from(b64, 'base64').length / 2)).toString('base64');
const longer = (b64: string): string => Buffer.concat([Buffer.from(b64, 'base64'), Buffer.alloc(8)]).toString('base64');

/** [what, change the valid state, the field the error must name]. */
const MALFORMED: [string, (j: Json) => unknown, string][] = [
  ['the state is null', () => null, ''],
  ['the state is a string', () => 'state', ''],
  ['the state is an array', () => [], ''],
  ['version is missing', (j) => { delete j.version; }, 'version'],
  ['version is from the future', (j) => { j.version = 4; }, 'version'],
  ['version is a string', (j) => { j.version = '2'; }, 'version'],
  ['machine is null', (j) => { j.machine = null; }, 'machine'],
  ['machine.memoryBytes is a string', (j) => { j.machine.memoryBytes = '16M'; }, 'machine.memoryBytes'],
  ['machine.memoryBytes is 4 GiB', (j) => { j.machine.memoryBytes = 4 * 2 ** 30; }, 'machine.memoryBytes'],
  ['machine.memoryBytes is huge', (j) => { j.machine.memoryBytes = 1e300; }, 'machine.memoryBytes'],
  ['machine.memoryBytes is 0', (j) => { j.machine.memoryBytes = 0; }, 'machine.memoryBytes'],
  ['machine.memoryBytes is negative', (j) => { j.machine.memoryBytes = -4096; }, 'machine.memoryBytes'],
  ['machine.memoryBytes is not whole pages', (j) => { j.machine.memoryBytes = 16 * 2 ** 20 + 1; }, 'machine.memoryBytes'],
  ['machine.vcpuCount is 0 (and vcpus empty)', (j) => { j.machine.vcpuCount = 0; j.vcpus = []; }, 'machine.vcpuCount'],
  ['machine.vcpuCount is fractional', (j) => { j.machine.vcpuCount = 1.5; }, 'machine.vcpuCount'],
  ['machine.vcpuCount is 10000', (j) => { j.machine.vcpuCount = 10000; }, 'machine.vcpuCount'],
  ['machine.cmdline is a number', (j) => { j.machine.cmdline = 5; }, 'machine.cmdline'],
  ['machine.image is missing', (j) => { delete j.machine.image; }, 'machine.image'],
  ['vcpus is an object', (j) => { j.vcpus = { 0: j.vcpus[0] }; }, 'vcpus'],
  ['vcpus holds fewer than vcpuCount', (j) => { j.vcpus.pop(); }, 'vcpus'],
  ['vcpus holds more than vcpuCount', (j) => { j.vcpus.push(j.vcpus[0]); }, 'vcpus'],
  ['a vCPU is null', (j) => { j.vcpus[1] = null; }, 'vcpus[1]'],
  ['two vCPUs have the same id', (j) => { j.vcpus[1].id = 0; }, 'vcpus[1].id'],
  ['a vCPU id is out of range', (j) => { j.vcpus[1].id = 7; }, 'vcpus[1].id'],
  ['a vCPU id is a string', (j) => { j.vcpus[1].id = '1'; }, 'vcpus[1].id'],
  ...(['mpState', 'regs', 'sregs', 'fpu', 'xsave', 'xcrs', 'debugregs', 'lapic', 'events'] as const).map((blob): [string, (j: Json) => unknown, string] =>
    [`vcpus[0].${blob} is half its struct`, (j) => { j.vcpus[0][blob] = half(j.vcpus[0][blob]); }, `vcpus[0].${blob}`]),
  ['vcpus[1].regs is longer than kvm_regs', (j) => { j.vcpus[1].regs = longer(j.vcpus[1].regs); }, 'vcpus[1].regs'],
  ['vcpus[0].regs is missing', (j) => { delete j.vcpus[0].regs; }, 'vcpus[0].regs'],
  ['vcpus[0].regs is not base64', (j) => { j.vcpus[0].regs = 'not base64!'; }, 'vcpus[0].regs'],
  ['vcpus[0].lapic is an array of numbers', (j) => { j.vcpus[0].lapic = [1, 2, 3]; }, 'vcpus[0].lapic'],
  ['vcpus[0].xsave is 200 KiB', (j) => { j.vcpus[0].xsave = Buffer.alloc(200 << 10).toString('base64'); }, 'vcpus[0].xsave'],
  ['an MSR value is not hex', (j) => { j.vcpus[0].msrs[0].data = 'xyz'; }, 'vcpus[0].msrs[0].data'],
  ['an MSR value is empty', (j) => { j.vcpus[0].msrs[0].data = ''; }, 'vcpus[0].msrs[0].data'],
  ['an MSR value has 17 hex digits', (j) => { j.vcpus[0].msrs[0].data = '1'.repeat(17); }, 'vcpus[0].msrs[0].data'],
  ['an MSR value is a number', (j) => { j.vcpus[0].msrs[0].data = 5; }, 'vcpus[0].msrs[0].data'],
  ['an MSR index is negative', (j) => { j.vcpus[0].msrs[0].index = -1; }, 'vcpus[0].msrs[0].index'],
  ['an MSR index is past 32 bits', (j) => { j.vcpus[0].msrs[0].index = 2 ** 32; }, 'vcpus[0].msrs[0].index'],
  ['an MSR entry is null', (j) => { j.vcpus[0].msrs[0] = null; }, 'vcpus[0].msrs[0]'],
  ['msrs is a string', (j) => { j.vcpus[0].msrs = 'msrs'; }, 'vcpus[0].msrs'],
  ['more MSRs than KVM_SET_MSRS takes', (j) => { j.vcpus[0].msrs = Array.from({ length: 300 }, (_, i) => ({ index: i, data: '0' })); }, 'vcpus[0].msrs'],
  ['cpuid is missing', (j) => { delete j.vcpus[0].cpuid; }, 'vcpus[0].cpuid'],
  ['a CPUID entry is a number', (j) => { j.vcpus[0].cpuid[0] = 7; }, 'vcpus[0].cpuid[0]'],
  ['a CPUID entry lacks eax', (j) => { delete j.vcpus[0].cpuid[0].eax; }, 'vcpus[0].cpuid[0].eax'],
  ['a CPUID register is past 32 bits', (j) => { j.vcpus[0].cpuid[0].ebx = 2 ** 32; }, 'vcpus[0].cpuid[0].ebx'],
  ['a CPUID function is fractional', (j) => { j.vcpus[0].cpuid[0].function = 0.5; }, 'vcpus[0].cpuid[0].function'],
  ['more CPUID entries than KVM takes', (j) => { j.vcpus[0].cpuid = Array.from({ length: 300 }, () => j.vcpus[0].cpuid[0]); }, 'vcpus[0].cpuid'],
  ['irqchip is missing', (j) => { delete j.irqchip; }, 'irqchip'],
  ['irqchip.picSlave is half its struct', (j) => { j.irqchip.picSlave = half(j.irqchip.picSlave); }, 'irqchip.picSlave'],
  ['irqchip.ioapic is missing', (j) => { delete j.irqchip.ioapic; }, 'irqchip.ioapic'],
  ['the PIC master blob is the IOAPIC\'s (chip_id 2)', (j) => { j.irqchip.picMaster = j.irqchip.ioapic; }, 'irqchip.picMaster'],
  ['pit2 is half its struct', (j) => { j.pit2 = half(j.pit2); }, 'pit2'],
  ['clock is a number', (j) => { j.clock = 48; }, 'clock'],
  ['clock is longer than kvm_clock_data', (j) => { j.clock = longer(j.clock); }, 'clock'],
  ['devices is a string', (j) => { j.devices = 'uart'; }, 'devices'],
  ['the UART\'s ier is not a byte', (j) => { j.devices[0].state.ier = 300; }, 'devices[0].state.ier'],
  ['the UART\'s thrEmptyPending is a string', (j) => { j.devices[0].state.thrEmptyPending = 'yes'; }, 'devices[0].state.thrEmptyPending'],
  ['the UART\'s rx is not base64', (j) => { j.devices[0].state.rx = '%%%%'; }, 'devices[0].state.rx'],
  ['the UART\'s rx holds more than the input bound', (j) => { j.devices[0].state.rx = Buffer.alloc((1 << 20) + 1).toString('base64'); }, 'devices[0].state.rx'],
  ['a device the board has not got', (j) => { j.devices[0].id = 'com9'; }, 'devices[0].id'],
  ['a device of another kind than the board has there', (j) => { j.devices[1].kind = 'uart16550'; }, 'devices[1].kind'],
  ['a device saved twice', (j) => { j.devices[1] = j.devices[0]; }, 'devices[1].id'],
  ['more devices than the board has', (j) => { j.devices.push(j.devices[1]); }, 'devices'],
  ['the debug-exit device with a state', (j) => { j.devices[1].state = { status: 1 }; }, 'devices[1].state'],
  ['a version 2 uart.ier is not a byte', (j) => { j.version = 2; delete j.devices; j.uart = { ...legacyUartJson(), ier: 300 }; }, 'uart.ier'],
  ['a version 1 uart.rx holds a number that is not a byte', (j) => { j.version = 1; delete j.devices; j.uart = { ...legacyUartJson(), rx: [1, 256] }; }, 'uart.rx[1]'],
];

describe('the VM state schema', () => {
  test('a valid state round-trips through JSON', () => {
    const state = validVmState();
    const back = vmStateFromJson(JSON.parse(JSON.stringify(vmStateToJson(state))));
    assert.deepEqual(back, state);
  });

  test('version 1 and 2 states (the UART alone, under uart) are still read; a longer XSAVE area (KVM_CAP_XSAVE2) is accepted', () => {
    const j = validJson();
    j.version = 1;
    delete j.devices;
    j.uart = { ...legacyUartJson(), rx: [104, 105] };
    j.vcpus[0].xsave = Buffer.alloc(KVM_SIZE.kvm_xsave + 4096).toString('base64');
    const state = vmStateFromJson(j);
    assert.deepEqual(state.devices.map((d) => [d.id, d.kind, (d.state as { rx: Uint8Array }).rx]), [['com1', 'uart16550', Uint8Array.of(104, 105)]]);
    const v2 = validJson();
    v2.version = 2;
    delete v2.devices;
    v2.uart = legacyUartJson();
    assert.deepEqual((vmStateFromJson(v2).devices[0]!.state as { rx: Uint8Array }).rx, Uint8Array.of(1, 2, 3), 'version 2: queued input in base64');
    assert.equal(state.vcpus[0]!.xsave.byteLength, KVM_SIZE.kvm_xsave + 4096);
  });

  for (const [what, change, field] of MALFORMED) {
    test(`${what}: refused, naming ${field || 'the state'}`, () => {
      const j = validJson();
      const replaced = change(j);
      const input = replaced === undefined ? j : replaced;
      assert.throws(() => vmStateFromJson(input), (e: unknown) => {
        assert.ok(e instanceof InvalidVmStateError, `an InvalidVmStateError, not ${(e as Error).name}: ${(e as Error).message}`);
        assert.equal(e.code, 'EVMSTATE');
        assert.equal(e.field, field, e.message);
        assert.doesNotMatch(e.message, /\[E[A-Z_]+\]/, 'no code pasted into the message');
        return true;
      });
    });
  }

  test('every saved kernel struct has one size, the one KVM_SIZE gives', () => {
    for (const { struct, bytes } of Object.values(SAVED_STRUCTS)) assert.equal(bytes, KVM_SIZE[struct], struct);
  });
});

describe('opening a VM snapshot', () => {
  test('a snapshot whose state has 0 vCPUs is refused before any VM exists', async (t) => {
    const path = join(tempDir(t), 'novcpu.snap');
    await writeVmStateSnapshot(path, (j) => { j.machine.vcpuCount = 0; j.vcpus = []; });
    await assert.rejects(openVmSnapshot(path), (e: unknown) =>
      e instanceof InvalidVmStateError && e.field === 'machine.vcpuCount' && e.snapshotPath === path && e.message.startsWith(`snapshot ${path}: VM state machine.vcpuCount is 0`));
  });

  test('null metadata, a null state and missing files are typed errors', async (t) => {
    const dir = tempDir(t);
    const nullMeta = join(dir, 'null-meta.snap');
    await writeVmStateSnapshot(nullMeta, () => undefined, { metadata: 'null' });
    await assert.rejects(openVmSnapshot(nullMeta), (e: unknown) => e instanceof InvalidVmSnapshotError && /metadata kind is missing/.test(e.message));
    const nullState = join(dir, 'null-state.snap');
    await writeVmStateSnapshot(nullState, () => null);
    await assert.rejects(openVmSnapshot(nullState), (e: unknown) => e instanceof InvalidVmStateError && e.field === '' && /VM state is null, not an object/.test(e.message));
    await assert.rejects(openVmSnapshot(join(dir, 'nothing.snap')), (e: unknown) => e instanceof VmSnapshotNotFoundError && e.code === 'ENOINPUT');
  });

  test('irqchip blobs for KVM_GET_IRQCHIP carry their chip id', () => {
    assert.equal(new DataView(irqchipBuffer(2).buffer).getUint32(0, true), 2);
  });
});
