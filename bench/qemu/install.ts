// Finds qemu-system-x86_64, and installs Debian's qemu-system-x86 when it is
// missing (the migrate section only: CI and scripts/setup.sh never need it),
// the way scripts/setup.sh installs nasm: non-interactive, as root or through
// sudo, bounded in time.
import { spawnSync } from 'node:child_process';

export const QEMU_BINARY = 'qemu-system-x86_64';
export const QEMU_PACKAGE = 'qemu-system-x86';
const INSTALL_TIMEOUT_MS = 15 * 60_000;

export interface QemuInstall {
  binary: string;
  /** `qemu-system-x86_64 --version`'s first line, e.g. "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)". */
  version: string;
  /** Whether this run installed it. */
  installed: boolean;
}

/** The installed QEMU's version line, or undefined when there is none on PATH. */
export function qemuVersion(binary = QEMU_BINARY): string | undefined {
  const result = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (result.status !== 0) return undefined;
  return result.stdout.split('\n')[0]!.trim();
}

/** Why QEMU cannot be installed here, or undefined when it can. */
function installBlocker(): string | undefined {
  if (spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status !== 0) return 'apt-get is not available (not Debian?)';
  if (process.getuid?.() === 0) return undefined;
  if (spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore', timeout: 10_000 }).status !== 0) return 'not root, and sudo needs a password';
  return undefined;
}

export class QemuInstallError extends Error {
  readonly code = 'EQEMUINSTALL';
}

/** QEMU on PATH, installed from Debian's packages first if it is not. */
export function ensureQemu(log: (line: string) => void): QemuInstall {
  const present = qemuVersion();
  if (present) return { binary: QEMU_BINARY, version: present, installed: false };
  const blocker = installBlocker();
  if (blocker) throw new QemuInstallError(`${QEMU_BINARY} is missing and cannot be installed: ${blocker}; install it with apt-get install -y ${QEMU_PACKAGE}`);
  const asRoot = process.getuid?.() === 0 ? [] : ['sudo', '-n'];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [['update', '-qq'], ['install', '-y', '-qq', '--no-install-recommends', QEMU_PACKAGE]]) {
    log(`bench: ${[...asRoot, 'apt-get', ...args].join(' ')}`);
    const [command, ...rest] = [...asRoot, 'apt-get', ...args] as [string, ...string[]];
    const result = spawnSync(command, rest, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: INSTALL_TIMEOUT_MS });
    if (result.status !== 0) {
      const why = result.error ? result.error.message : `exit ${result.status}, signal ${result.signal}`;
      throw new QemuInstallError(`apt-get ${args.join(' ')} failed (${why}): ${(result.stderr ?? '').slice(-2000)}`);
    }
  }
  const version = qemuVersion();
  if (!version) throw new QemuInstallError(`${QEMU_PACKAGE} installed, but ${QEMU_BINARY} --version still fails`);
  log(`bench: installed ${version}`);
  return { binary: QEMU_BINARY, version, installed: true };
}

/**
 * Whether QEMU can use KVM here: a machine-less QEMU started with -accel kvm
 * answers query-kvm (this host's /dev/kvm may be PVM's, which QEMU uses as
 * it would VMX or SVM). A second or so.
 */
export function qemuKvmUsable(binary: string): boolean {
  const input = ['qmp_capabilities', 'query-kvm', 'quit'].map((execute) => JSON.stringify({ execute })).join('\n') + '\n';
  const result = spawnSync(binary, ['-accel', 'kvm', '-machine', 'none', '-nodefaults', '-no-user-config', '-display', 'none', '-qmp', 'stdio'], { input, encoding: 'utf8', timeout: 20_000 });
  return /"enabled":\s*true/.test(result.stdout ?? '');
}
