// The log of a long-running service (`serve`, `pages serve`): one line per
// event, as text for people or (--log-format json) as one JSON object per
// line in pino's shape, so the usual log shippers and `pino-pretty` read it:
//
//   {"level":30,"time":1700000000000,"pid":4242,"hostname":"host","event":"client-gone","client":3,…,"msg":"client 3: gone …"}
//
// level is pino's number (30 info, 40 warn, 50 error), time ms since the
// epoch; `event` names what happened, the fields after it are its data, and
// msg is the text line. Info and warnings go to stdout, errors to stderr, in
// both formats. Written synchronously: a line is out before the process may
// exit on the next signal.
import { hostname } from 'node:os';
import { Option } from 'commander';
import { errorJson, errorLine, roundMs } from './output.js';
import type { AvailabilityEvent } from '../sources/network/availability.js';
import { availabilityLevel, availabilityLine } from '../sources/network/availability-text.js';

export type LogFormat = 'text' | 'json';

export const LOG_LEVELS = { info: 30, warn: 40, error: 50 } as const;
export type LogLevel = keyof typeof LOG_LEVELS;

export interface LogSinks {
  stdout: (line: string) => void;
  stderr: (line: string) => void;
}

const processSinks: LogSinks = {
  stdout: (line) => void process.stdout.write(`${line}\n`),
  stderr: (line) => void process.stderr.write(`${line}\n`),
};

export class Logger {
  private readonly host = hostname();

  constructor(readonly format: LogFormat, private readonly sinks: LogSinks = processSinks) {}

  info(event: string, fields: Record<string, unknown>, text: string): void {
    this.write('info', event, fields, text);
  }

  warn(event: string, fields: Record<string, unknown>, text: string): void {
    this.write('warn', event, fields, text);
  }

  /** An error: the JSON line carries it as `error` (code, message, its data); the text line is `text` then the error's line. */
  error(event: string, fields: Record<string, unknown>, error: unknown, text: string): void {
    this.write('error', event, { ...fields, error: errorJson(error) }, `${text}${errorLine(error).replace(/^userfault: /, '')}`);
  }

  /** A line with no event of its own (a summary's text lines): text only; JSON gets the event instead. */
  write(level: LogLevel, event: string, fields: Record<string, unknown>, text: string | readonly string[]): void {
    const sink = level === 'error' ? this.sinks.stderr : this.sinks.stdout;
    if (this.format === 'text') {
      for (const line of typeof text === 'string' ? [text] : text) sink(line);
      return;
    }
    const msg = typeof text === 'string' ? text : text.join('\n');
    sink(JSON.stringify({ level: LOG_LEVELS[level], time: Date.now(), pid: process.pid, hostname: this.host, event, ...fields, msg }));
  }
}

/** The --log-format option, shared by the services. */
export function logFormatOption(): Option {
  return new Option('--log-format <format>', 'log lines as text, or as JSON objects in pino\'s shape (level, time, pid, hostname, event, its fields, msg)').choices(['text', 'json']).default('text');
}

/** --json is the older spelling of --log-format json. */
export function logFormatOf(options: { logFormat?: string; json?: boolean }): LogFormat {
  return options.json || options.logFormat === 'json' ? 'json' : 'text';
}

/**
 * A source's outage as a log line (src/sources/network/availability-text.ts
 * has the words): event `source-unavailable`, `source-still-unavailable`,
 * `source-restored` or `source-gone`, with the AvailabilityEvent's fields.
 */
export function logAvailability(log: Logger, event: AvailabilityEvent): void {
  const { type, ...fields } = event;
  const rounded = Object.fromEntries(Object.entries(fields).map(([key, value]) => [key, typeof value === 'number' && /Ms$/.test(key) ? roundMs(value) : value]));
  log.write(availabilityLevel(event), `source-${type}`, rounded, availabilityLine(event));
}
