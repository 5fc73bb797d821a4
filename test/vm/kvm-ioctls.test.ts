// The KVM layer's own checks: every buffer handed to an ioctl holds what the
// kernel copies (the one path, kvm/ioctls/ioctl.ts), saved state is checked
// against its struct right before KVM reads it, and errnos mean KVM things
// (kvm/kvm-errors.ts), not userfaultfd ones.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { constants as osConstants } from 'node:os';
import { KvmAccessDeniedError, KvmUnavailableError } from '../../src/vm/errors.js';
import { KVM, KVM_PIT_SPEAKER_DUMMY, KVM_SIZE } from '../../src/vm/kvm/ioctls/constants.js';
import { iocSize, kvmIoctlBytes } from '../../src/vm/kvm/ioctls/ioctl.js';
import {
  KvmArgumentTooShortError, KvmBadAddressError, KvmBusyError, KvmInvalidArgumentError, KvmIoctlError, KvmIoctlUnsupportedError, KvmStateSizeError, kvmErrorForErrno,
} from '../../src/vm/kvm/kvm-errors.js';
import { KvmSystem } from '../../src/vm/kvm/kvm-system.js';
import type { VcpuState } from '../../src/vm/kvm/kvm-vcpu.js';
import { exitCodeFor } from '../../src/exit-codes.js';
import { kvmSkipReason } from './helpers.js';

const skip = kvmSkipReason();
const E = osConstants.errno;

describe('KVM ioctl numbers and struct sizes', () => {
  test('each fixed-size ioctl declares (_IOC_SIZE) the size of its struct', () => {
    const pairs: [keyof typeof KVM, keyof typeof KVM_SIZE][] = [
      ['KVM_GET_REGS', 'kvm_regs'], ['KVM_SET_REGS', 'kvm_regs'], ['KVM_GET_SREGS', 'kvm_sregs'], ['KVM_SET_SREGS', 'kvm_sregs'],
      ['KVM_GET_FPU', 'kvm_fpu'], ['KVM_SET_FPU', 'kvm_fpu'], ['KVM_GET_XSAVE', 'kvm_xsave'], ['KVM_SET_XSAVE', 'kvm_xsave'],
      ['KVM_GET_XCRS', 'kvm_xcrs'], ['KVM_SET_XCRS', 'kvm_xcrs'], ['KVM_GET_DEBUGREGS', 'kvm_debugregs'], ['KVM_SET_DEBUGREGS', 'kvm_debugregs'],
      ['KVM_GET_LAPIC', 'kvm_lapic_state'], ['KVM_SET_LAPIC', 'kvm_lapic_state'], ['KVM_GET_VCPU_EVENTS', 'kvm_vcpu_events'], ['KVM_SET_VCPU_EVENTS', 'kvm_vcpu_events'],
      ['KVM_GET_MP_STATE', 'kvm_mp_state'], ['KVM_SET_MP_STATE', 'kvm_mp_state'], ['KVM_GET_IRQCHIP', 'kvm_irqchip'], ['KVM_SET_IRQCHIP', 'kvm_irqchip'],
      ['KVM_GET_PIT2', 'kvm_pit_state2'], ['KVM_SET_PIT2', 'kvm_pit_state2'], ['KVM_GET_CLOCK', 'kvm_clock_data'], ['KVM_SET_CLOCK', 'kvm_clock_data'],
      ['KVM_SET_USER_MEMORY_REGION', 'kvm_userspace_memory_region'], ['KVM_IRQ_LINE', 'kvm_irq_level'], ['KVM_CREATE_PIT2', 'kvm_pit_config'],
      ['KVM_SET_CPUID2', 'kvm_cpuid2'], ['KVM_GET_MSRS', 'kvm_msrs'], ['KVM_SET_MSRS', 'kvm_msrs'], ['KVM_GET_MSR_INDEX_LIST', 'kvm_msr_list'],
    ];
    for (const [ioctl, struct] of pairs) assert.equal(iocSize(KVM[ioctl]), KVM_SIZE[struct], `${ioctl} / ${struct}`);
  });
});

describe('KVM errors', () => {
  test('errnos map through KVM\'s own table: ENOENT is not "range not registered", EINVAL is a refused value', () => {
    const enoent = kvmErrorForErrno('KVM_SET_MSRS', E.ENOENT);
    assert.equal(enoent.constructor, KvmIoctlError);
    assert.equal(enoent.code, 'EKVMIOCTL');
    assert.equal(enoent.message, 'KVM_SET_MSRS failed: ENOENT');
    assert.ok(kvmErrorForErrno('KVM_SET_SREGS', E.EINVAL) instanceof KvmInvalidArgumentError);
    assert.ok(kvmErrorForErrno('KVM_CREATE_VCPU', E.EEXIST) instanceof KvmBusyError);
    assert.ok(kvmErrorForErrno('KVM_GET_XSAVE2', E.ENOTTY) instanceof KvmIoctlUnsupportedError);
    assert.ok(kvmErrorForErrno('KVM_SET_REGS', E.EFAULT) instanceof KvmBadAddressError);
    const e = kvmErrorForErrno('KVM_RUN', E.EIO);
    assert.deepEqual([e.ioctl, e.errno, e.code], ['KVM_RUN', E.EIO, 'EKVMIOCTL']);
    assert.equal(exitCodeFor(kvmErrorForErrno('KVM_GET_XSAVE2', E.ENOTTY)), 69);
  });

  test('/dev/kvm permission denied says to join the kvm group or run as root, and exits 77; a missing /dev/kvm exits 69', () => {
    const denied = new KvmAccessDeniedError(E.EACCES);
    assert.match(denied.message, /kvm group/);
    assert.match(denied.message, /root/);
    assert.equal(exitCodeFor(denied), 77);
    const missing = new KvmUnavailableError(E.ENOENT);
    assert.match(missing.message, /does not exist/);
    assert.equal(exitCodeFor(missing), 69);
  });
});

describe('saved state reaching KVM', { skip }, () => {
  test('a buffer shorter than the ioctl\'s struct never reaches KVM; a short saved blob is refused by the vCPU before any ioctl', (t) => {
    const system = KvmSystem.open();
    const vm = system.createVm();
    t.after(() => {
      vm.close();
      system.close();
    });
    vm.createIrqchip();
    vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
    const vcpu = vm.createVcpu(0);
    assert.throws(() => kvmIoctlBytes(vcpu.fd, 'KVM_SET_REGS', new Uint8Array(KVM_SIZE.kvm_regs / 2)), (e: unknown) =>
      e instanceof KvmArgumentTooShortError && e.ioctl === 'KVM_SET_REGS' && e.neededBytes === 144 && e.actualBytes === 72);
    // KVM_SET_XSAVE reads the VM's whole XSAVE area: it must get at least that much.
    assert.throws(() => kvmIoctlBytes(vcpu.fd, 'KVM_SET_XSAVE', new Uint8Array(KVM_SIZE.kvm_xsave), vm.xsaveBytes() + 1), KvmArgumentTooShortError);

    const good: VcpuState = { ...vcpu.saveState(system.msrIndexList().slice(0, 0)), id: 0 };
    for (const blob of ['mpState', 'regs', 'sregs', 'fpu', 'xsave', 'xcrs', 'debugregs', 'lapic', 'events'] as const) {
      const bad = { ...good, [blob]: good[blob].subarray(0, Math.floor(good[blob].byteLength / 2)) };
      assert.throws(() => vcpu.restoreState(bad), (e: unknown) => e instanceof KvmStateSizeError && e.field === `vcpus[0].${blob}` && e.code === 'EKVMSTATESIZE', blob);
    }
    vcpu.restoreState(good);
    assert.throws(() => vm.setPit2(vm.getPit2().subarray(0, 56)), (e: unknown) => e instanceof KvmStateSizeError && e.field === 'pit2');
    assert.throws(() => vm.setClock(new Uint8Array(24)), (e: unknown) => e instanceof KvmStateSizeError && e.field === 'clock');
    const chips = vm.getIrqchip();
    assert.throws(() => vm.setIrqchip({ ...chips, ioapic: chips.ioapic.subarray(0, 100) }), (e: unknown) => e instanceof KvmStateSizeError && e.field === 'irqchip.ioapic');
    vm.setIrqchip(chips);
  });
});
