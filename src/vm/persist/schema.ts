// The building blocks of the schemas that read saved state (a snapshot's VM
// state, a device's state, a migration stream's): untrusted input, so each
// check names the path of what it checks and throws InvalidVmStateError for
// the first problem, before anything is built from it.
import { InvalidVmStateError } from '../errors.js';

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return value.length > 40 ? `a string of ${value.length} characters` : JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return typeof value === 'undefined' ? 'missing' : `a ${typeof value}`;
}

export function object(value: unknown, path: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidVmStateError(path, `is ${describe(value)}, not an object`);
  return value as Record<string, unknown>;
}

/** obj[name], own properties only (a "constructor" key must not find Object's); a missing one is undefined, which every check below reports as missing. */
export function field(obj: Record<string, unknown>, name: string): unknown {
  return Object.prototype.hasOwnProperty.call(obj, name) ? obj[name] : undefined;
}

export function array(value: unknown, path: string): unknown[] {
  if (!Array.isArray(value)) throw new InvalidVmStateError(path, `is ${describe(value)}, not an array`);
  return value;
}

export function integer(value: unknown, path: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new InvalidVmStateError(path, `is ${describe(value)}, not an integer`);
  return value;
}

export function uint32(value: unknown, path: string): number {
  const n = integer(value, path);
  if (n < 0 || n > 0xffffffff) throw new InvalidVmStateError(path, `is ${n}, not a 32-bit unsigned value`);
  return n;
}

export function string(value: unknown, path: string, maxChars: number): string {
  if (typeof value !== 'string') throw new InvalidVmStateError(path, `is ${describe(value)}, not a string`);
  if (value.length > maxChars) throw new InvalidVmStateError(path, `is ${value.length} characters, more than ${maxChars}`);
  return value;
}

/** Strict base64 (Buffer.from would skip bad characters silently). */
export function base64(value: unknown, path: string, maxChars: number): Uint8Array {
  if (typeof value !== 'string') throw new InvalidVmStateError(path, `is ${describe(value)}, not a base64 string`);
  if (value.length > maxChars) throw new InvalidVmStateError(path, `is ${value.length} characters of base64, more than ${maxChars}`);
  if (value.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) throw new InvalidVmStateError(path, 'is not valid base64');
  return new Uint8Array(Buffer.from(value, 'base64'));
}

export function boolean(value: unknown, path: string): boolean {
  if (typeof value !== 'boolean') throw new InvalidVmStateError(path, `is ${describe(value)}, not a boolean`);
  return value;
}

/** An integer in [min, max]. */
export function integerIn(value: unknown, path: string, min: number, max: number, what = `from ${min} to ${max}`): number {
  const n = integer(value, path);
  if (n < min || n > max) throw new InvalidVmStateError(path, `is ${n}, not ${what}`);
  return n;
}
