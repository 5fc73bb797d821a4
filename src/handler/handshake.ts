// The handshake a client (a Firecracker snapshot restore, or anything speaking
// its protocol) opens a handler connection with. Pure: bytes in, regions out.
//
// On the wire: one JSON array, UTF-8, with no length prefix and no terminator;
// the userfaultfd rides as SCM_RIGHTS on one of the sendmsg calls (Firecracker
// sends both in one). Nothing ever goes back: the protocol has no reply.
//
//   [ { "base_host_virt_addr": 139637976727552,   where the region starts in the client
//       "size": 4194304,                          bytes
//       "offset": 0,                              where its contents start in the memory file
//       "page_size": 4096,                        bytes
//       "page_size_kib": 4096 },                  ALSO bytes, despite its name (see pageSizeField)
//     ... ]
//
// One extension, this project's own (Firecracker never sends it): a client
// whose memory is to be a private mapping of the server's page cache (serve
// --page-cache: zero-copy restore, the checked pages shared by every client)
// first sends the request object
//
//   { "page_cache": true }
//
// and the server answers, this once, with one JSON line
//
//   {"page_cache":{"size_bytes":268435456}}\n     with the sealed memfd as SCM_RIGHTS
//
// The client maps the memfd MAP_PRIVATE at its regions' offsets, registers
// them MISSING and MINOR (UFFD_FEATURE_MINOR_SHMEM), and goes on with the
// array and its uffd as above. A server without a page cache refuses the
// request (EHANDSHAKE_REQUEST) and ends the connection.
//
// A stream socket keeps no message boundaries, so the array may come in any
// number of reads. It is complete when its closing bracket arrives: the
// decoder tracks bracket depth outside strings, byte by byte, and parses only
// then. The structural bytes are ASCII and UTF-8 continuation bytes never are,
// so a split inside a multi-byte character cannot fool the scan.

/** A memory region the client asks to have served, as validated here. */
export interface HandshakeRegion {
  /** `base_host_virt_addr`: the region's first byte in the client's address space. */
  hostAddress: number;
  /** `size`. */
  lengthBytes: number;
  /** `offset`: where the region's contents start in the memory file. */
  fileOffset: number;
  /** `page_size`, or `page_size_kib` (which Firecracker fills with bytes too). */
  pageSizeBytes: number;
}

export type HandshakeProblemCode =
  /** The bytes are not UTF-8. */
  | 'EHANDSHAKE_ENCODING'
  /** Not JSON. */
  | 'EHANDSHAKE_JSON'
  /** JSON, but not an array of region objects. */
  | 'EHANDSHAKE_SHAPE'
  /** A field missing, or not a non-negative integer. */
  | 'EHANDSHAKE_FIELD'
  /** A page size this handler does not serve, or two that disagree. */
  | 'EHANDSHAKE_PAGE_SIZE'
  /** An address, size or offset that is not a multiple of the page size. */
  | 'EHANDSHAKE_ALIGNMENT'
  /** Two regions share host addresses. */
  | 'EHANDSHAKE_OVERLAP'
  /** Two regions show the same bytes of the memory file at different addresses. */
  | 'EHANDSHAKE_ALIAS'
  /** Arrays or objects nested deeper than any region list needs. */
  | 'EHANDSHAKE_TOO_DEEP'
  /** offset + size past the end of the memory file. */
  | 'EHANDSHAKE_BEYOND_FILE'
  /** No closing bracket within the length limit. */
  | 'EHANDSHAKE_TOO_LONG'
  /** The stream ended before the array closed. */
  | 'EHANDSHAKE_TRUNCATED'
  /** An object where the array belongs that is not a request this server knows, or a request it cannot grant. */
  | 'EHANDSHAKE_REQUEST';

/** One thing wrong with a handshake, with the region (index in the array) and field it concerns. */
export interface HandshakeProblem {
  code: HandshakeProblemCode;
  message: string;
  region?: number;
  field?: string;
}

export type HandshakeParse =
  /** More bytes are needed; `bytesSeen` so far. */
  | { complete: false; bytesSeen: number }
  /**
   * The handshake is over: either `errors` is empty and `regions` holds every
   * region, or `errors` says why it was refused and `regions` is empty.
   * `lengthBytes` is how many of the bytes pushed belong to it; any after are not the handshake's.
   */
  | {
      complete: true;
      regions: HandshakeRegion[];
      errors: HandshakeProblem[];
      lengthBytes: number;
      /** The bytes were a request (`{"page_cache": true}`), not the regions: they follow, in a decoder of their own. */
      request?: HandshakeRequest;
    };

/** What a client may ask for before it sends its regions. */
export type HandshakeRequest = 'page-cache';

/** What the handshake is checked against. */
export interface HandshakeLimits {
  /** The page size this handler serves (the host's base page). */
  pageSizeBytes: number;
  /** Length of the memory image the `offset`s index. */
  memoryFileSizeBytes: number;
  /** Longest handshake accepted (default 64 KiB: thousands of regions). */
  maxLengthBytes?: number;
}

export const DEFAULT_MAX_HANDSHAKE_BYTES = 64 * 1024;
/**
 * A region list is an array of flat objects: depth 2. Anything much deeper is
 * hostile, and JSON.parse and error formatting recurse per level, so the scan
 * refuses it before either runs.
 */
export const MAX_HANDSHAKE_DEPTH = 4;

const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

function isJsonWhitespace(byte: number): boolean {
  return byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d;
}

/**
 * Accumulates a handshake pushed in pieces. The scan resumes where the last
 * push stopped, so feeding a byte at a time costs no more than feeding it whole.
 * After the result is complete, further pushes return that same result.
 */
export class HandshakeDecoder {
  private readonly chunks: Uint8Array[] = [];
  private bytesSeen = 0;
  private started = false;
  /** The value opened with a brace: a request, not the region array. */
  private isRequest = false;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private result: HandshakeParse | undefined;
  private readonly maxLengthBytes: number;

  constructor(private readonly limits: HandshakeLimits) {
    this.maxLengthBytes = limits.maxLengthBytes ?? DEFAULT_MAX_HANDSHAKE_BYTES;
  }

  get isComplete(): boolean {
    return this.result !== undefined;
  }

  /** Feed the next bytes read; they are copied, so the caller may reuse its buffer. */
  push(chunk: Uint8Array): HandshakeParse {
    if (this.result) return this.result;
    for (let i = 0; i < chunk.length; i++) {
      const end = this.scan(chunk[i]!);
      if (end === undefined) continue;
      const lengthBytes = this.bytesSeen + i + 1;
      if (end === 'not-an-array') {
        const message = `the handshake must be a JSON array of regions (or a request object); it starts with ${describeByte(chunk[i]!)}`;
        return this.finish({ regions: [], errors: [problem('EHANDSHAKE_SHAPE', message)] }, lengthBytes);
      }
      if (end === 'too-deep') {
        const message = `the handshake nests arrays or objects more than ${MAX_HANDSHAKE_DEPTH} deep (a region list needs 2)`;
        return this.finish({ regions: [], errors: [problem('EHANDSHAKE_TOO_DEEP', message)] }, lengthBytes);
      }
      this.chunks.push(chunk.slice(0, i + 1));
      if (lengthBytes > this.maxLengthBytes) return this.finish({ regions: [], errors: [tooLong(this.maxLengthBytes)] }, lengthBytes);
      return this.finish(this.decode(), lengthBytes);
    }
    this.chunks.push(chunk.slice());
    this.bytesSeen += chunk.length;
    if (this.bytesSeen > this.maxLengthBytes) return this.finish({ regions: [], errors: [tooLong(this.maxLengthBytes)] }, this.bytesSeen);
    return { complete: false, bytesSeen: this.bytesSeen };
  }

  /** The stream ended: complete now, refused as truncated if the array never closed. */
  end(): HandshakeParse {
    if (this.result) return this.result;
    const message = this.bytesSeen === 0
      ? 'the client sent no handshake before hanging up'
      : `the handshake stopped after ${this.bytesSeen} bytes, before its array closed`;
    return this.finish({ regions: [], errors: [problem('EHANDSHAKE_TRUNCATED', message)] }, this.bytesSeen);
  }

  /** Advance the scan over one byte. */
  private scan(byte: number): 'closed' | 'not-an-array' | 'too-deep' | undefined {
    if (!this.started) {
      if (isJsonWhitespace(byte)) return undefined;
      if (byte !== OPEN_BRACKET && byte !== OPEN_BRACE) return 'not-an-array';
      this.started = true;
      this.isRequest = byte === OPEN_BRACE;
      this.depth = 1;
      return undefined;
    }
    if (this.inString) {
      if (this.escaped) this.escaped = false;
      else if (byte === BACKSLASH) this.escaped = true;
      else if (byte === QUOTE) this.inString = false;
      return undefined;
    }
    switch (byte) {
      case QUOTE:
        this.inString = true;
        return undefined;
      case OPEN_BRACKET:
      case OPEN_BRACE:
        this.depth++;
        return this.depth > MAX_HANDSHAKE_DEPTH ? 'too-deep' : undefined;
      case CLOSE_BRACKET:
      case CLOSE_BRACE:
        // A mismatched pair still ends the scan; JSON.parse then names the mistake.
        this.depth--;
        return this.depth === 0 ? 'closed' : undefined;
      default:
        return undefined;
    }
  }

  private decode(): { regions: HandshakeRegion[]; errors: HandshakeProblem[]; request?: HandshakeRequest } {
    const bytes = concat(this.chunks);
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      return { regions: [], errors: [problem('EHANDSHAKE_ENCODING', 'the handshake is not valid UTF-8')] };
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      return { regions: [], errors: [problem('EHANDSHAKE_JSON', `the handshake is not JSON: ${(error as Error).message}`)] };
    }
    if (this.isRequest) return validateRequest(value);
    return validateHandshake(value, this.limits);
  }

  private finish(outcome: { regions: HandshakeRegion[]; errors: HandshakeProblem[]; request?: HandshakeRequest }, lengthBytes: number): HandshakeParse {
    this.result = { complete: true, regions: outcome.errors.length > 0 ? [] : outcome.regions, errors: outcome.errors, lengthBytes };
    if (outcome.request && outcome.errors.length === 0) this.result.request = outcome.request;
    this.chunks.length = 0;
    return this.result;
  }
}

/** Decode a handshake held whole (or a prefix of one: then `complete` is false). */
export function parseHandshake(bytes: Uint8Array, limits: HandshakeLimits): HandshakeParse {
  return new HandshakeDecoder(limits).push(bytes);
}

/** A request object: exactly `{"page_cache": true}`, the one there is. */
export function validateRequest(value: unknown): { regions: HandshakeRegion[]; errors: HandshakeProblem[]; request?: HandshakeRequest } {
  const fields = value as Record<string, unknown>;
  const keys = Object.keys(fields);
  if (keys.length === 1 && keys[0] === 'page_cache' && fields.page_cache === true) return { regions: [], errors: [], request: 'page-cache' };
  const shown = JSON.stringify(value);
  return { regions: [], errors: [problem('EHANDSHAKE_REQUEST', `the request ${shown.length <= 60 ? shown : `${shown.slice(0, 60)}...`} is not one this server knows (the one there is: {"page_cache": true})`)] };
}

/** The server's answer to a page-cache request: one JSON line (the memfd rides on it). */
export function pageCacheReply(sizeBytes: number): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify({ page_cache: { size_bytes: sizeBytes } })}\n`);
}

/**
 * Check a decoded handshake against the memory file and page size. Every
 * problem is reported, not just the first, each naming its region and field.
 */
export function validateHandshake(value: unknown, limits: HandshakeLimits): { regions: HandshakeRegion[]; errors: HandshakeProblem[] } {
  const errors: HandshakeProblem[] = [];
  if (!Array.isArray(value)) {
    return { regions: [], errors: [problem('EHANDSHAKE_SHAPE', `the handshake must be a JSON array of regions, not ${jsonKind(value)}`)] };
  }
  if (value.length === 0) {
    return { regions: [], errors: [problem('EHANDSHAKE_SHAPE', 'the handshake names no regions')] };
  }
  const regions: Array<HandshakeRegion & { index: number }> = [];
  value.forEach((entry: unknown, index) => {
    const region = validateRegion(entry, index, limits, errors);
    if (region) regions.push({ ...region, index });
  });
  const byAddress = [...regions].sort((a, b) => a.hostAddress - b.hostAddress);
  for (let i = 1; i < byAddress.length; i++) {
    const previous = byAddress[i - 1]!;
    const current = byAddress[i]!;
    if (current.hostAddress < previous.hostAddress + previous.lengthBytes) {
      const [first, second] = previous.index < current.index ? [previous, current] : [current, previous];
      errors.push({
        code: 'EHANDSHAKE_OVERLAP',
        message: `regions ${first.index} and ${second.index} overlap at ${hex(current.hostAddress)}`,
        region: second.index,
      });
    }
  }
  // The pager keeps one state per page of the memory file and one address per
  // file page: two host ranges showing the same file bytes would share a state
  // (the second's faults coalesced onto a fill of the first, never woken).
  // Firecracker never sends such regions, so they are refused.
  const byOffset = [...regions].sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 1; i < byOffset.length; i++) {
    const previous = byOffset[i - 1]!;
    const current = byOffset[i]!;
    if (current.fileOffset < previous.fileOffset + previous.lengthBytes) {
      const [first, second] = previous.index < current.index ? [previous, current] : [current, previous];
      errors.push({
        code: 'EHANDSHAKE_ALIAS',
        message: `regions ${first.index} and ${second.index} both show memory-file offset ${current.fileOffset} ` +
          '(two addresses for the same pages are not served)',
        region: second.index,
        field: 'offset',
      });
    }
  }
  if (errors.length > 0) return { regions: [], errors };
  return { regions: regions.map(({ index: _index, ...region }) => region), errors };
}

function validateRegion(entry: unknown, index: number, limits: HandshakeLimits, errors: HandshakeProblem[]): HandshakeRegion | undefined {
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
    errors.push({ code: 'EHANDSHAKE_SHAPE', message: `region ${index} is ${jsonKind(entry)}, not an object`, region: index });
    return undefined;
  }
  const fields = entry as Record<string, unknown>;
  const before = errors.length;
  const hostAddress = integerField(fields, 'base_host_virt_addr', index, errors);
  const lengthBytes = integerField(fields, 'size', index, errors);
  const fileOffset = integerField(fields, 'offset', index, errors);
  const pageSizeBytes = pageSizeField(fields, index, limits, errors);
  if (errors.length > before) return undefined;
  const region = { hostAddress: hostAddress!, lengthBytes: lengthBytes!, fileOffset: fileOffset!, pageSizeBytes: pageSizeBytes! };

  if (region.lengthBytes === 0) {
    errors.push({ code: 'EHANDSHAKE_FIELD', message: `region ${index}: size is 0`, region: index, field: 'size' });
  }
  for (const [field, value] of [['base_host_virt_addr', region.hostAddress], ['size', region.lengthBytes], ['offset', region.fileOffset]] as const) {
    if (value % region.pageSizeBytes !== 0) {
      errors.push({
        code: 'EHANDSHAKE_ALIGNMENT',
        message: `region ${index}: ${field} ${hex(value)} is not a multiple of the ${region.pageSizeBytes}-byte page`,
        region: index,
        field,
      });
    }
  }
  if (region.fileOffset + region.lengthBytes > limits.memoryFileSizeBytes) {
    errors.push({
      code: 'EHANDSHAKE_BEYOND_FILE',
      message: `region ${index}: offset ${region.fileOffset} + size ${region.lengthBytes} = ${region.fileOffset + region.lengthBytes} ` +
        `is past the end of the ${limits.memoryFileSizeBytes}-byte memory file`,
      region: index,
      field: 'offset',
    });
  }
  if (!Number.isSafeInteger(region.hostAddress + region.lengthBytes)) {
    errors.push({ code: 'EHANDSHAKE_FIELD', message: `region ${index}: base_host_virt_addr + size overflows`, region: index, field: 'size' });
  }
  return errors.length > before ? undefined : region;
}

function integerField(fields: Record<string, unknown>, field: string, index: number, errors: HandshakeProblem[]): number | undefined {
  if (!(field in fields)) {
    errors.push({ code: 'EHANDSHAKE_FIELD', message: `region ${index}: ${field} is missing`, region: index, field });
    return undefined;
  }
  const value = fields[field];
  // Firecracker's fields are u64/usize. A double holds integers exactly up to
  // 2^53, past every x86-64 user address; a larger value has already lost its
  // low bits in JSON.parse and is refused rather than rounded.
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    errors.push({
      code: 'EHANDSHAKE_FIELD',
      message: `region ${index}: ${field} must be a non-negative integer below 2^53, got ${describeValue(value)}`,
      region: index,
      field,
    });
    return undefined;
  }
  return value;
}

/**
 * The region's page size. What each Firecracker version really sends
 * (GuestRegionUffdMapping in src/vmm/src/persist.rs):
 *   before 1.8: `page_size_kib` only, holding BYTES (4096; 2097152 for 2 MiB pages);
 *   1.8 and later: `page_size` and the deprecated `page_size_kib`, both BYTES
 *   (its doc comment: "the name is wrong but cannot be changed due to being API").
 * So both fields are read as bytes, and must agree when both are sent. A
 * `page_size_kib` that only makes sense as KiB (4) is refused with that said,
 * rather than guessed at.
 */
function pageSizeField(fields: Record<string, unknown>, index: number, limits: HandshakeLimits, errors: HandshakeProblem[]): number | undefined {
  const hasBytes = 'page_size' in fields;
  const hasKib = 'page_size_kib' in fields;
  if (!hasBytes && !hasKib) {
    errors.push({ code: 'EHANDSHAKE_FIELD', message: `region ${index}: page_size (or page_size_kib) is missing`, region: index, field: 'page_size' });
    return undefined;
  }
  const bytes = hasBytes ? integerField(fields, 'page_size', index, errors) : undefined;
  const legacy = hasKib ? integerField(fields, 'page_size_kib', index, errors) : undefined;
  if ((hasBytes && bytes === undefined) || (hasKib && legacy === undefined)) return undefined;
  if (bytes !== undefined && legacy !== undefined && bytes !== legacy) {
    errors.push({
      code: 'EHANDSHAKE_PAGE_SIZE',
      message: `region ${index}: page_size ${bytes} and page_size_kib ${legacy} disagree (Firecracker sends both in bytes)`,
      region: index,
      field: 'page_size_kib',
    });
    return undefined;
  }
  const pageSize = (bytes ?? legacy)!;
  const field = hasBytes ? 'page_size' : 'page_size_kib';
  if (pageSize !== limits.pageSizeBytes) {
    const asKib = !hasBytes && pageSize * 1024 === limits.pageSizeBytes
      ? ` (page_size_kib holds bytes, as Firecracker sends it: ${limits.pageSizeBytes}, not ${pageSize})`
      : '';
    errors.push({
      code: 'EHANDSHAKE_PAGE_SIZE',
      message: `region ${index}: page size ${pageSize} bytes is not served here: this handler serves ${limits.pageSizeBytes}-byte pages${asKib || 
        ' (hugetlbfs-backed guest memory is not supported)'}`,
      region: index,
      field,
    });
    return undefined;
  }
  return pageSize;
}

function problem(code: HandshakeProblemCode, message: string): HandshakeProblem {
  return { code, message };
}

function tooLong(maxLengthBytes: number): HandshakeProblem {
  return problem('EHANDSHAKE_TOO_LONG', `the handshake's array did not close within ${maxLengthBytes} bytes`);
}

function describeByte(byte: number): string {
  return byte >= 0x20 && byte < 0x7f ? `'${String.fromCharCode(byte)}'` : `byte 0x${byte.toString(16).padStart(2, '0')}`;
}

/** A short, bounded description of a JSON value for a message: never the value itself when it is big or nested. */
function describeValue(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'number') return String(value);
  if (typeof value === 'string') return value.length <= 40 ? JSON.stringify(value) : `a ${value.length}-character string`;
  return jsonKind(value);
}

function jsonKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  return `a ${typeof value}`;
}

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

function concat(chunks: readonly Uint8Array[]): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  let length = 0;
  for (const chunk of chunks) length += chunk.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}
