// `userfault probe`: what this host offers this process. userfaultfd (how it
// is created, the features and API ioctls, and the ioctls the kernel allows
// on a registered range, per memory type and mode), who may create one
// (/dev/userfaultfd's permissions, vm.unprivileged_userfaultfd), and KVM.
// Exit 0 when this process can create a userfaultfd, 1 when it cannot (the
// report says why); KVM is reported, never required.
import { accessSync, constants as fsConstants, readFileSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import { ExitCode } from '../exit-codes.js';
import { Mapping } from '../mem/index.js';
import { PAGE_SIZE } from '../native.js';
import { UFFD_FEATURE, Userfaultfd, type RegisterModeName } from '../uffd/index.js';
import { errorCode, errorMessage } from './output.js';

export interface RangeProbe {
  memory: 'anonymous' | 'shmem';
  modes: RegisterModeName[];
  /** The ioctls UFFDIO_REGISTER says the range allows, or why registering was refused. */
  ioctls?: string[];
  refused?: { code: string; message: string };
}

export interface DeviceProbe {
  path: string;
  present: boolean;
  /** "0660": the permission bits. */
  mode?: string;
  uid?: number;
  gid?: number;
  /** This process may open it for reading and writing. */
  openable?: boolean;
}

export interface ProbeReport {
  userfaultfd: {
    available: boolean;
    /** How a uffd is created: 'device' (/dev/userfaultfd) or 'syscall'. */
    via?: string;
    features?: string[];
    unknownFeatureBits?: string;
    apiIoctls?: string[];
    ranges?: RangeProbe[];
    error?: { code: string; message: string };
    device: DeviceProbe;
    /** /proc/sys/vm/unprivileged_userfaultfd: 1 lets any process use the syscall; 0 lets only CAP_SYS_PTRACE (and user-mode-only uffds). */
    unprivilegedUserfaultfd: number | null;
  };
  kvm: DeviceProbe & { apiVersion?: number; error?: { code: string; message: string } };
}

const RANGE_CASES: ReadonlyArray<{ memory: RangeProbe['memory']; modes: RegisterModeName[] }> = [
  { memory: 'anonymous', modes: ['MISSING'] },
  { memory: 'anonymous', modes: ['WP'] },
  { memory: 'anonymous', modes: ['MISSING', 'WP'] },
  { memory: 'shmem', modes: ['MISSING'] },
  { memory: 'shmem', modes: ['WP'] },
  { memory: 'shmem', modes: ['MINOR'] },
];

export function registerProbeCommand(program: Command): void {
  program
    .command('probe')
    .description('what this host offers: userfaultfd features and ioctls (per memory type), who may create a uffd, and KVM')
    .option('--json', 'print the report as one JSON object')
    .action(async (options: { json?: boolean }) => {
      const report = await probeHost();
      console.log(options.json ? JSON.stringify(report, null, 2) : formatProbeReport(report).join('\n'));
      if (!report.userfaultfd.available) process.exitCode = ExitCode.CHECK_FAILED;
    });
}

export async function probeHost(): Promise<ProbeReport> {
  const device = probeDevice('/dev/userfaultfd');
  const unprivilegedUserfaultfd = readSysctl('/proc/sys/vm/unprivileged_userfaultfd');
  let userfaultfd: ProbeReport['userfaultfd'];
  try {
    const offer = Userfaultfd.probe();
    userfaultfd = {
      available: true,
      via: offer.via,
      features: [...offer.features],
      unknownFeatureBits: `0x${(offer.rawFeatures & ~knownFeatureMask()).toString(16)}`,
      apiIoctls: [...offer.ioctls],
      ranges: RANGE_CASES.map(probeRange),
      device,
      unprivilegedUserfaultfd,
    };
  } catch (error) {
    userfaultfd = { available: false, error: { code: errorCode(error), message: errorMessage(error) }, device, unprivilegedUserfaultfd };
  }
  return { userfaultfd, kvm: await probeKvm() };
}

/** Register a one-page range of `memory` in `modes` on a fresh uffd and read back what it allows. */
function probeRange({ memory, modes }: { memory: RangeProbe['memory']; modes: RegisterModeName[] }): RangeProbe {
  const mapping = memory === 'anonymous' ? Mapping.anonymous(PAGE_SIZE) : Mapping.memfd(PAGE_SIZE, 'userfault-probe');
  let uffd: Userfaultfd | undefined;
  try {
    uffd = Userfaultfd.open({ nonBlocking: true });
    const range = uffd.register(mapping.address, mapping.lengthBytes, modes);
    uffd.unregister(mapping.address, mapping.lengthBytes);
    return { memory, modes, ioctls: [...range.ioctls] };
  } catch (error) {
    return { memory, modes, refused: { code: errorCode(error), message: errorMessage(error) } };
  } finally {
    uffd?.close();
    mapping.unmap();
  }
}

function probeDevice(path: string): DeviceProbe {
  let stats;
  try {
    stats = statSync(path);
  } catch {
    return { path, present: false };
  }
  let openable = true;
  try {
    accessSync(path, fsConstants.R_OK | fsConstants.W_OK);
  } catch {
    openable = false;
  }
  return { path, present: true, mode: `0${(stats.mode & 0o7777).toString(8)}`, uid: stats.uid, gid: stats.gid, openable };
}

function readSysctl(path: string): number | null {
  try {
    const value = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(value) ? value : null;
  } catch {
    return null;
  }
}

async function probeKvm(): Promise<ProbeReport['kvm']> {
  const device = probeDevice('/dev/kvm');
  if (!device.present) return device;
  try {
    // Loaded only here: the KVM part of the addon is not needed for anything else probe does.
    const { kvmNative } = await import('../native-kvm.js');
    const { KVM } = await import('../vm/kvm/ioctls/constants.js');
    const fd = kvmNative.kvmOpen();
    try {
      return { ...device, openable: true, apiVersion: kvmNative.kvmIoctl(fd, KVM.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION') };
    } finally {
      const { native } = await import('../native.js');
      native.close(fd);
    }
  } catch (error) {
    return { ...device, openable: false, error: { code: errorCode(error), message: errorMessage(error) } };
  }
}

export function formatProbeReport(report: ProbeReport): string[] {
  const u = report.userfaultfd;
  const lines: string[] = [];
  if (u.available) {
    lines.push(`userfaultfd: available, via ${u.via === 'device' ? '/dev/userfaultfd' : 'the userfaultfd syscall'}`);
    lines.push(`  features: ${u.features!.join(' ')}`);
    lines.push(`  unknown feature bits: ${u.unknownFeatureBits}`);
    lines.push(`  api ioctls: ${u.apiIoctls!.join(' ')}`);
    lines.push('  ioctls on a registered range:');
    for (const range of u.ranges!) {
      const what = `${range.memory} ${range.modes.join('+')}`.padEnd(22);
      lines.push(`    ${what} ${range.ioctls ? range.ioctls.join(' ') : `refused: ${range.refused!.message} [${range.refused!.code}]`}`);
    }
  } else {
    lines.push(`userfaultfd: NOT available to this process: ${u.error!.message} [${u.error!.code}]`);
  }
  lines.push(`  ${formatDevice(u.device)}`);
  lines.push(`  vm.unprivileged_userfaultfd = ${u.unprivilegedUserfaultfd ?? 'unknown (no /proc/sys/vm/unprivileged_userfaultfd)'}` +
    (u.unprivilegedUserfaultfd === 0 ? ' (the syscall needs CAP_SYS_PTRACE, or UFFD_USER_MODE_ONLY)' : ''));
  const k = report.kvm;
  lines.push(`kvm: ${k.apiVersion !== undefined ? `available, API version ${k.apiVersion}` : k.present ? `NOT openable: ${k.error?.message ?? 'permission denied'}` : 'NOT present'}`);
  lines.push(`  ${formatDevice(k)}`);
  return lines;
}

function formatDevice(device: DeviceProbe): string {
  if (!device.present) return `${device.path}: absent`;
  return `${device.path}: mode ${device.mode}, owner ${device.uid}:${device.gid}, ${device.openable ? 'read/write for this process' : 'NOT read/write for this process'}`;
}

function knownFeatureMask(): bigint {
  return Object.values(UFFD_FEATURE).reduce((mask, bit) => mask | bit, 0n);
}
