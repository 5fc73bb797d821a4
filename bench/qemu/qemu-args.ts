// The command line of a QEMU that runs the micro guest the way our VMM runs
// it: the same multiboot image by -kernel with the same command line, one
// vCPU, the same RAM, COM1 on stdio (the guest's console and its input), and
// the guest's done port (0xf4: `out 0xf4, al` exits QEMU with (al << 1) | 1).
// Nothing else: no default devices, no firmware config from the host.

export type QemuAccel = 'kvm' | 'tcg';

export interface QemuMachine {
  accel: QemuAccel;
  memoryBytes: number;
  kernel: string;
  append: string;
  /** The QMP socket (a Unix socket QEMU listens on). */
  qmpSocket: string;
  /** Destination: wait for `migrate-incoming` (-incoming defer). */
  incoming?: boolean;
  /** Extra options (the destination's trace). */
  extra?: string[];
}

/** The guest's done port, as the micro guest writes it (guest/micro.asm DONE_PORT). */
export const DONE_PORT = 0xf4;

export function qemuArgs(m: QemuMachine): string[] {
  const args = [
    '-accel', m.accel,
    '-machine', 'pc',
    '-m', `${Math.round(m.memoryBytes / (1 << 20))}M`,
    '-smp', '1',
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-chardev', 'stdio,id=console,signal=off',
    '-serial', 'chardev:console',
    '-device', `isa-debug-exit,iobase=0x${DONE_PORT.toString(16)},iosize=0x04`,
    '-kernel', m.kernel,
    '-append', m.append,
    '-qmp', `unix:${m.qmpSocket},server=on,wait=off`,
  ];
  if (m.incoming) args.push('-incoming', 'defer');
  return [...args, ...(m.extra ?? [])];
}

/** The guest's status from QEMU's exit code (isa-debug-exit: (status << 1) | 1), or undefined when QEMU ended otherwise. */
export function guestStatusFromExit(code: number | null): number | undefined {
  if (code === null || code % 2 === 0) return undefined;
  return code >> 1;
}
