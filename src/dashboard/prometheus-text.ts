// The Prometheus text format (version 0.0.4), read back: what the dashboard
// gets from a /metrics endpoint. Pure: text in, samples out. Comment lines
// (# HELP, # TYPE, anything else after #) are skipped; a sample is
//
//   name{label="value",…} value [timestamp]
//
// with \\, \" and \n escaped inside label values. A line that is none of
// these is an error naming its number (a /metrics that answers garbage is
// not silently shown as zeros).
import { UserfaultError } from '../errors.js';

export interface Sample {
  name: string;
  labels: Readonly<Record<string, string>>;
  value: number;
}

export class MetricsTextError extends UserfaultError {
  override readonly code = 'EMETRICSTEXT';
  constructor(readonly line: number, problem: string) {
    super(`metrics text, line ${line}: ${problem}`);
  }
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;

export function parsePrometheusText(text: string): Sample[] {
  const samples: Sample[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    samples.push(parseSample(line, i + 1));
  }
  return samples;
}

function parseSample(line: string, number: number): Sample {
  const name = NAME.exec(line)?.[0];
  if (!name) throw new MetricsTextError(number, `no metric name in ${JSON.stringify(line.slice(0, 80))}`);
  let at = name.length;
  const labels: Record<string, string> = {};
  if (line[at] === '{') {
    at++;
    for (;;) {
      while (line[at] === ' ') at++;
      if (line[at] === '}') {
        at++;
        break;
      }
      const labelName = LABEL_NAME.exec(line.slice(at))?.[0];
      if (!labelName) throw new MetricsTextError(number, `a bad label name at column ${at + 1}`);
      at += labelName.length;
      if (line[at] !== '=' || line[at + 1] !== '"') throw new MetricsTextError(number, `label ${labelName} has no ="value"`);
      at += 2;
      let value = '';
      for (;;) {
        const c = line[at];
        if (c === undefined) throw new MetricsTextError(number, `label ${labelName}'s value is not closed`);
        at++;
        if (c === '"') break;
        if (c === '\\') {
          const e = line[at++];
          value += e === 'n' ? '\n' : e === '\\' ? '\\' : e === '"' ? '"' : `\\${e ?? ''}`;
        } else value += c;
      }
      labels[labelName] = value;
      while (line[at] === ' ') at++;
      if (line[at] === ',') at++;
      else if (line[at] !== '}') throw new MetricsTextError(number, `expected , or } after label ${labelName}`);
    }
  }
  const rest = line.slice(at).trim().split(/\s+/);
  if (rest.length < 1 || rest.length > 2 || rest[0] === '') throw new MetricsTextError(number, `${name}: expected a value (and perhaps a timestamp)`);
  const value = parseValue(rest[0]!);
  if (value === undefined) throw new MetricsTextError(number, `${name}: ${JSON.stringify(rest[0])} is not a number`);
  return { name, labels, value };
}

/** As Go's strconv.ParseFloat (Prometheus's own parser): Inf and NaN in any case (prom-client writes "Nan"). */
function parseValue(text: string): number | undefined {
  const lower = text.toLowerCase();
  if (lower === '+inf' || lower === 'inf') return Infinity;
  if (lower === '-inf') return -Infinity;
  if (lower === 'nan') return NaN;
  const value = Number(text);
  return Number.isNaN(value) ? undefined : value;
}

/** The samples, looked up by name and labels. */
export class SampleSet {
  private readonly byName = new Map<string, Sample[]>();

  constructor(samples: readonly Sample[]) {
    for (const sample of samples) {
      const list = this.byName.get(sample.name);
      if (list) list.push(sample);
      else this.byName.set(sample.name, [sample]);
    }
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** Every sample of `name` whose labels include `match`. */
  all(name: string, match: Readonly<Record<string, string>> = {}): Sample[] {
    return (this.byName.get(name) ?? []).filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v));
  }

  /** The sum of the samples of `name` matching `match` (0 when there are none). */
  sum(name: string, match: Readonly<Record<string, string>> = {}): number {
    return this.all(name, match).reduce((n, s) => n + s.value, 0);
  }

  /** The one sample's value, or undefined. */
  value(name: string, match: Readonly<Record<string, string>> = {}): number | undefined {
    return this.all(name, match)[0]?.value;
  }
}
