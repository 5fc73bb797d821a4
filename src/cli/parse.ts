// Option values: commander argParsers that turn text into a checked value or
// refuse it. commander prefixes the refusal with the user's option and value
// ("option '--size <bytes>' argument '0' is invalid."), so the messages here
// say only what a good value is. Out-of-range values are refused, never clamped.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from 'commander';

const UNITS: Record<string, number> = { '': 1, K: 1 << 10, M: 1 << 20, G: 1 << 30, T: 2 ** 40 };

/** "64M", "4096", "1G" -> bytes. */
export function parseSize(text: string): number {
  const match = /^(\d+)([KMGT])?(i?B)?$/i.exec(text.trim());
  if (!match) throw new InvalidArgumentError(`"${text}" is not a size (examples: 4096, 64M, 1G)`);
  const bytes = Number(match[1]) * UNITS[(match[2] ?? '').toUpperCase()]!;
  if (!Number.isSafeInteger(bytes)) throw new InvalidArgumentError(`"${text}" is too large`);
  return bytes;
}

/** A size in bytes (K/M/G/T suffixes), at least `min` and a multiple of `multipleOf` (the page, say). */
export function sizeArg(limits: { min?: number; max?: number; multipleOf?: number; multipleName?: string } = {}): (text: string) => number {
  return (text) => {
    const bytes = parseSize(text);
    const min = limits.min ?? 0;
    if (bytes < min) throw new InvalidArgumentError(`It must be at least ${min} bytes`);
    if (limits.max !== undefined && bytes > limits.max) throw new InvalidArgumentError(`It must be at most ${limits.max} bytes`);
    if (limits.multipleOf !== undefined && bytes % limits.multipleOf !== 0) {
      throw new InvalidArgumentError(`It must be a multiple of ${limits.multipleName ?? `${limits.multipleOf} bytes`}`);
    }
    return bytes;
  };
}

/** A whole number in [min, max]; `unit` names what it counts in the refusal ("milliseconds"). */
export function integerArg(limits: { min: number; max?: number; unit: string }): (text: string) => number {
  return (text) => {
    const value = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
    const max = limits.max ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isSafeInteger(value) || value < limits.min || value > max) {
      const range = limits.max === undefined ? `at least ${limits.min}` : `from ${limits.min} to ${limits.max}`;
      throw new InvalidArgumentError(`It must be a whole number of ${limits.unit}, ${range}`);
    }
    return value;
  };
}

/** A file mode in octal, as chmod(1) takes it: "660", "0660", "0o660". */
export function fileModeArg(): (text: string) => number {
  return (text) => {
    const match = /^(?:0o?)?([0-7]{1,4})$/i.exec(text.trim());
    if (!match) throw new InvalidArgumentError('It must be an octal file mode such as 0660');
    return parseInt(match[1]!, 8);
  };
}

/** A group as chgrp(1) takes it: a name (looked up through NSS with getent, else /etc/group) or a numeric id. */
export function groupArg(): (text: string) => number {
  return (text) => {
    if (/^\d+$/.test(text)) return Number(text);
    const gid = lookUpGroup(text);
    if (gid === undefined) throw new InvalidArgumentError(`There is no group named "${text}" (give a name or a numeric id)`);
    return gid;
  };
}

function lookUpGroup(name: string): number | undefined {
  let lines: string;
  try {
    lines = execFileSync('getent', ['group', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch (error) {
    // getent exits 2 for a name it does not know; without getent, read the file.
    if ((error as { status?: number }).status === 2) return undefined;
    lines = readFileSync('/etc/group', 'utf8');
  }
  for (const line of lines.split('\n')) {
    const [groupName, , gid] = line.split(':');
    if (groupName === name && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  return undefined;
}

/** An object store's endpoint: an http:// or https:// URL with a host (http://127.0.0.1:9000), checked before any file is read. */
export function endpointArg(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new InvalidArgumentError(`It must be a URL with a scheme, http://HOST:PORT or https://HOST`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError(`It must be http:// or https://, not ${url.protocol}//`);
  if (url.hostname === '') throw new InvalidArgumentError('It must name a host');
  return text;
}

/**
 * A touch or write order: `sequential` (the documented name; `seq` is taken
 * too, the micro guest's own word) or `random`. `demo --pattern` and
 * `vm run --pattern` accept the same words.
 */
export function patternArg(text: string): 'sequential' | 'random' {
  if (text === 'sequential' || text === 'seq') return 'sequential';
  if (text === 'random') return 'random';
  throw new InvalidArgumentError('It must be sequential (or seq) or random');
}
