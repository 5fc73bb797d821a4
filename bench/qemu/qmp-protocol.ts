// QMP, QEMU's monitor protocol, as pure functions over text: one JSON object
// per line each way. The server opens with a greeting; a command is
// {"execute", "arguments", "id"} and is answered by {"return", "id"} or
// {"error": {"class", "desc"}, "id"}; events {"event", "data", "timestamp"}
// come in between at any time. See QEMU's docs/interop/qmp-spec.rst.

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export type QmpMessage =
  | { type: 'greeting'; version: QmpVersion }
  | { type: 'return'; id: number | undefined; value: unknown }
  | { type: 'error'; id: number | undefined; errorClass: string; description: string }
  | { type: 'event'; name: string; data: Record<string, unknown>; timestampMicros: number };

/** A line that is not one of the four shapes QMP sends. */
export class QmpProtocolError extends Error {
  readonly code = 'EQMPPROTOCOL';
  constructor(readonly line: string, reason: string) {
    super(`QMP: ${reason}: ${line.slice(0, 200)}`);
  }
}

/** Decodes one line the server sent. */
export function decodeQmpLine(line: string): QmpMessage {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    throw new QmpProtocolError(line, 'not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new QmpProtocolError(line, 'not an object');
  const m = parsed as Record<string, unknown>;
  const id = typeof m.id === 'number' ? m.id : undefined;
  if ('QMP' in m) {
    const version = (m.QMP as { version?: QmpVersion } | null)?.version;
    if (!version || typeof version !== 'object') throw new QmpProtocolError(line, 'a greeting without a version');
    return { type: 'greeting', version };
  }
  if ('return' in m) return { type: 'return', id, value: m.return };
  if ('error' in m) {
    const error = m.error as { class?: unknown; desc?: unknown } | null;
    return { type: 'error', id, errorClass: String(error?.class ?? 'unknown'), description: String(error?.desc ?? '') };
  }
  if (typeof m.event === 'string') {
    const ts = m.timestamp as { seconds?: number; microseconds?: number } | undefined;
    const timestampMicros = (ts?.seconds ?? 0) * 1e6 + (ts?.microseconds ?? 0);
    return { type: 'event', name: m.event, data: (m.data ?? {}) as Record<string, unknown>, timestampMicros };
  }
  throw new QmpProtocolError(line, 'neither greeting, return, error nor event');
}

/** The line that sends a command (with its newline). */
export function encodeQmpCommand(id: number, command: string, args?: Record<string, unknown>): string {
  return `${JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id })}\n`;
}

/** Splits a byte stream into lines; the last, unfinished, one is kept for the next chunk. */
export class LineSplitter {
  private partial = '';

  push(chunk: string): string[] {
    const parts = (this.partial + chunk).split('\n');
    this.partial = parts.pop()!;
    return parts.map((line) => line.replace(/\r$/, '')).filter((line) => line !== '');
  }
}
