// The migrate section's options, parsed here so that bench/args.ts only
// spreads them in (it is shared by every section).
import type { QemuAccel } from '../qemu/qemu-args.js';
import type { Switchover } from './ours.js';
import type { DirtyPattern } from './workload.js';

export interface MigrateOptions {
  /** Guest RAM on both VMMs. */
  memoryBytes: number;
  /** Pages the writer dirties per second. */
  ratePagesPerSecond: number;
  patterns: DirtyPattern[];
  switchovers: Switchover[];
  /** auto: kvm when QEMU can use it here, else tcg. */
  qemuAccel: QemuAccel | 'auto';
}

export const MIGRATE_ARG_OPTIONS = {
  'migrate-mem': { type: 'string' },
  'migrate-rate': { type: 'string' },
  'migrate-patterns': { type: 'string' },
  'migrate-switchover': { type: 'string' },
  'qemu-accel': { type: 'string' },
} as const;

export const MIGRATE_USAGE = `  --migrate-mem SIZE       guest RAM in the migrate section (default 512M)
  --migrate-rate N         pages/s the guest's writer dirties (default 16384)
  --migrate-patterns LIST  sequential,random (default both)
  --migrate-switchover L   first-pass (post-copy after the first pass, the issue's), immediate (pure post-copy); default both
  --qemu-accel A           auto (default: kvm if QEMU can use it), kvm or tcg`;

const PATTERNS: readonly DirtyPattern[] = ['sequential', 'random'];
const SWITCHOVERS: readonly Switchover[] = ['first-pass', 'immediate'];

function list<T extends string>(name: string, text: string | undefined, known: readonly T[]): T[] {
  if (text === undefined) return [...known];
  const items = text.split(',').map((s) => s.trim());
  for (const item of items) if (!(known as readonly string[]).includes(item)) throw new RangeError(`--${name}: unknown ${item} (known: ${known.join(', ')})`);
  return items as T[];
}

export function parseMigrateOptions(values: Partial<Record<keyof typeof MIGRATE_ARG_OPTIONS, string>>, parseSize: (text: string) => number): MigrateOptions {
  const memoryBytes = parseSize(values['migrate-mem'] ?? '512M');
  if (memoryBytes % (1 << 20) !== 0 || memoryBytes < 16 << 20 || memoryBytes > 3 * 2 ** 30) throw new RangeError('--migrate-mem: whole MiB, from 16M to 3G');
  const rate = Number(values['migrate-rate'] ?? 16384);
  if (!Number.isInteger(rate) || rate < 1) throw new RangeError(`--migrate-rate ${values['migrate-rate']}: a positive number of pages per second`);
  const accel = values['qemu-accel'] ?? 'auto';
  if (accel !== 'auto' && accel !== 'kvm' && accel !== 'tcg') throw new RangeError(`--qemu-accel ${accel}: auto, kvm or tcg`);
  return {
    memoryBytes,
    ratePagesPerSecond: rate,
    patterns: list('migrate-patterns', values['migrate-patterns'], PATTERNS),
    switchovers: list('migrate-switchover', values['migrate-switchover'], SWITCHOVERS),
    qemuAccel: accel,
  };
}
