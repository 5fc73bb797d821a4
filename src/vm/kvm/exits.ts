// VM exits decoded once, from the vCPU's mmap'ed struct kvm_run, into one
// tagged union. Pure: takes the bytes of the kvm_run mapping.
//
// struct kvm_run (x86-64), the part read here:
//   0  u8  request_interrupt_window     8  u32 exit_reason
//   1  u8  immediate_exit              12  u8  ready_for_interrupt_injection
//  16  u64 cr8   24 u64 apic_base      32  union (per exit reason):
//   io:       u8 direction, u8 size, u16 port, u32 count, u64 data_offset
//   mmio:     u64 phys_addr, u8 data[8], u32 len, u8 is_write
//   fail_entry: u64 hardware_entry_failure_reason, u32 cpu
//   internal: u32 suberror, u32 ndata, u64 data[16]
//   system_event: u32 type, u32 ndata, u64 data[16]
//   hw (unknown): u64 hardware_exit_reason
import { KVM_EXIT, KVM_EXIT_IO_IN, KVM_RUN_OFFSET } from './ioctls/constants.js';

export type VmExit =
  | {
      type: 'io';
      direction: 'in' | 'out';
      /** Bytes per item: 1, 2 or 4. */
      size: number;
      port: number;
      /** Items: more than 1 for a string instruction (rep outsb / insb). */
      count: number;
      /** size * count bytes inside the kvm_run mapping: read for out, fill for in. */
      data: Uint8Array;
    }
  | { type: 'mmio'; physAddress: number; isWrite: boolean; lengthBytes: number; data: Uint8Array }
  | { type: 'hlt' }
  | { type: 'shutdown' }
  | { type: 'fail-entry'; hardwareReason: bigint; cpu: number }
  | { type: 'internal-error'; suberror: number; data: bigint[] }
  | { type: 'system-event'; eventType: number }
  | { type: 'intr' }
  | { type: 'debug' }
  | { type: 'exception' }
  | { type: 'unknown'; exitReason: number; hardwareReason: bigint };

/** Decode the exit the last KVM_RUN returned with. `run` is the whole kvm_run mapping. */
export function decodeExit(run: Uint8Array): VmExit {
  const view = new DataView(run.buffer, run.byteOffset, run.byteLength);
  const reason = view.getUint32(KVM_RUN_OFFSET.exit_reason, true);
  const at = KVM_RUN_OFFSET.exit;
  switch (reason) {
    case KVM_EXIT.KVM_EXIT_IO: {
      const size = view.getUint8(at + 1);
      const count = view.getUint32(at + 4, true);
      const dataOffset = Number(view.getBigUint64(at + 8, true));
      const lengthBytes = size * count;
      if (dataOffset + lengthBytes > run.byteLength) {
        throw new RangeError(`KVM_EXIT_IO data [${dataOffset}, +${lengthBytes}) lies outside kvm_run (${run.byteLength} bytes)`);
      }
      return {
        type: 'io',
        direction: view.getUint8(at) === KVM_EXIT_IO_IN ? 'in' : 'out',
        size,
        port: view.getUint16(at + 2, true),
        count,
        data: run.subarray(dataOffset, dataOffset + lengthBytes),
      };
    }
    case KVM_EXIT.KVM_EXIT_MMIO: {
      const lengthBytes = Math.min(view.getUint32(at + 16, true), 8);
      return {
        type: 'mmio',
        physAddress: Number(view.getBigUint64(at, true)),
        data: run.subarray(at + 8, at + 8 + lengthBytes),
        lengthBytes,
        isWrite: view.getUint8(at + 20) !== 0,
      };
    }
    case KVM_EXIT.KVM_EXIT_HLT:
      return { type: 'hlt' };
    case KVM_EXIT.KVM_EXIT_SHUTDOWN:
      return { type: 'shutdown' };
    case KVM_EXIT.KVM_EXIT_FAIL_ENTRY:
      return { type: 'fail-entry', hardwareReason: view.getBigUint64(at, true), cpu: view.getUint32(at + 8, true) };
    case KVM_EXIT.KVM_EXIT_INTERNAL_ERROR: {
      const ndata = Math.min(view.getUint32(at + 4, true), 16);
      const data = Array.from({ length: ndata }, (_, i) => view.getBigUint64(at + 8 + i * 8, true));
      return { type: 'internal-error', suberror: view.getUint32(at, true), data };
    }
    case KVM_EXIT.KVM_EXIT_SYSTEM_EVENT:
      return { type: 'system-event', eventType: view.getUint32(at, true) };
    case KVM_EXIT.KVM_EXIT_INTR:
      return { type: 'intr' };
    case KVM_EXIT.KVM_EXIT_DEBUG:
      return { type: 'debug' };
    case KVM_EXIT.KVM_EXIT_EXCEPTION:
      return { type: 'exception' };
    default:
      return { type: 'unknown', exitReason: reason, hardwareReason: view.getBigUint64(at, true) };
  }
}

/** One line naming an exit, for logs and errors. */
export function describeExit(exit: VmExit): string {
  switch (exit.type) {
    case 'io':
      return `io ${exit.direction} port 0x${exit.port.toString(16)} size ${exit.size} count ${exit.count}`;
    case 'mmio':
      return `mmio ${exit.isWrite ? 'write' : 'read'} 0x${exit.physAddress.toString(16)} len ${exit.lengthBytes}`;
    case 'fail-entry':
      return `fail-entry hardware reason 0x${exit.hardwareReason.toString(16)} cpu ${exit.cpu}`;
    case 'internal-error':
      return `internal-error suberror ${exit.suberror} data [${exit.data.map((d) => '0x' + d.toString(16)).join(', ')}]`;
    case 'system-event':
      return `system-event type ${exit.eventType}`;
    case 'unknown':
      return `unknown exit reason ${exit.exitReason} hardware reason 0x${exit.hardwareReason.toString(16)}`;
    case 'hlt':
    case 'shutdown':
    case 'intr':
    case 'debug':
    case 'exception':
      return exit.type;
    default: {
      const never: never = exit;
      return String(never);
    }
  }
}
