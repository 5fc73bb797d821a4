// How every command prints: results on stdout, errors on stderr. With --json
// each of them is JSON: a command's result is one JSON document (or, for a
// long-running command, one JSON object per line), and an error is one line
// `{"error":{"code","message","exitStatus",...}}` on stderr. Without --json an
// error is one line `userfault: MESSAGE [CODE]`. A warning (something went
// wrong that did not end the command) is `userfault: warning: MESSAGE [CODE]`,
// or `{"warning":{"code","message",...}}`. Only the CLI's edge (program.ts)
// prints the error that ends a command. docs/exit-codes.md says so.
import { exitCodeFor, type ExitCode } from '../exit-codes.js';

export interface ErrorJson {
  code: string;
  message: string;
  exitStatus: number;
  /** The error's own data (the path, the option, the bytes needed...). */
  [field: string]: unknown;
}

/** The code a user sees: the error's stable code, or for an unexpected one its class name. */
export function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return code;
  return error instanceof Error ? error.name : 'EUNKNOWN';
}

/**
 * The message without a code pasted in front: Node's system errors read
 * "ENOENT: no such file or directory, open 'x'", and the code is printed beside
 * the message anyway.
 */
export function errorMessage(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = errorCode(error);
  return error.message.startsWith(`${code}: `) ? error.message.slice(code.length + 2) : error.message;
}

const NOT_DATA = new Set(['code', 'message', 'stack', 'name', 'cause']);

/** The error as the JSON object printed under --json, its own fields included. */
export function errorJson(error: unknown, exitStatus: ExitCode | number = exitCodeFor(error)): ErrorJson {
  const json: ErrorJson = { code: errorCode(error), message: errorMessage(error), exitStatus };
  if (error instanceof Error) {
    for (const [key, value] of Object.entries(error)) {
      if (!NOT_DATA.has(key) && isJsonData(value)) json[key] = value;
    }
    if (error.cause instanceof Error) json.cause = { code: errorCode(error.cause), message: errorMessage(error.cause) };
  }
  return json;
}

/** One line: `userfault: MESSAGE [CODE]`. */
export function errorLine(error: unknown): string {
  return `userfault: ${errorMessage(error)} [${errorCode(error)}]`;
}

/** Print an error as the command's last word, on stderr. */
export function printError(error: unknown, json: boolean, exitStatus: number = exitCodeFor(error)): void {
  process.stderr.write(json ? `${JSON.stringify({ error: errorJson(error, exitStatus) })}\n` : `${errorLine(error)}\n`);
}

/**
 * A warning: `userfault: warning: MESSAGE [CODE]`, or under --json
 * `{"warning":{code,message,...}}`, on stderr. A plain string is a message
 * without a code.
 */
export function printWarning(warning: unknown, json: boolean): void {
  if (typeof warning === 'string') {
    process.stderr.write(json ? `${JSON.stringify({ warning: { message: warning } })}\n` : `userfault: warning: ${warning}\n`);
  } else if (json) {
    const { exitStatus: _exitStatus, ...fields } = errorJson(warning);
    process.stderr.write(`${JSON.stringify({ warning: fields })}\n`);
  } else {
    process.stderr.write(`userfault: warning: ${errorMessage(warning)} [${errorCode(warning)}]\n`);
  }
}

function isJsonData(value: unknown): boolean {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value);
    case 'object':
      if (value === null) return true;
      if (Array.isArray(value)) return value.every(isJsonData);
      return Object.getPrototypeOf(value) === Object.prototype && Object.values(value).every(isJsonData);
    default:
      return false;
  }
}

/** `ms` rounded to 0.1 ms: timings here are good to a tenth of a millisecond, no better. */
export function roundMs(ms: number): number {
  return Math.round(ms * 10) / 10;
}
