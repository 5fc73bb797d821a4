import { InvalidArgumentError } from 'commander';

const UNITS: Record<string, number> = { '': 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 };

/** "64M", "4096", "1G" -> bytes. */
export function parseSize(text: string): number {
  const match = /^(\d+)([KMG])?(i?B)?$/i.exec(text.trim());
  if (!match) throw new InvalidArgumentError(`"${text}" is not a size (examples: 4096, 64M, 1G)`);
  return Number(match[1]) * UNITS[(match[2] ?? '').toUpperCase()]!;
}
