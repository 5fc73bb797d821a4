// What V8 maps for a wasm32 WebAssembly.Memory, and the check that a memory
// has the one layout LazyWasmMemory can serve. Pure: it reads the text of
// /proc/self/maps, never the memory.
//
// The layout, as measured on this project's machines (Node 20.20 / V8 11.3,
// x86-64, Linux 6.18, the wasm trap handler on, which is Node's default):
// every wasm32 memory, whatever its `maximum`, shared or not, is one
// reservation of 10 GiB of private anonymous memory, made PROT_NONE, with the
// committed pages made read-write by mprotect:
//
//   base - 2 GiB      base            base + size          base + 8 GiB
//   |  negative guard |  rw-p (size)  |  ---p: room to grow  |  ...
//   |  ---p           |  committed    |  up to 4 GiB, then   |
//   |                 |               |  the offset guard    |
//
// memory.grow (from JS or from wasm code) mprotects more of the reservation
// read-write: the base never moves, up to 65536 pages (4 GiB). Nothing in
// the reservation is resident when the memory is created (mincore: none).
// VMAs of adjacent reservations merge in /proc/self/maps (same flags), so
// the maps cannot show where a reservation ends; what they can show is that
// the 8 GiB from the base are private anonymous, read-write exactly over the
// committed bytes and inaccessible after them — which only a guarded
// reservation looks like. A memory without guard regions (a V8 with the trap
// handler off, or one on another architecture) is reserved only up to its
// maximum, or less, and grows by copying to a new address; it fails this
// check and is refused rather than served wrong.
export const WASM_PAGE_BYTES = 64 * 1024;

/** The most pages a wasm32 memory may have (4 GiB). */
export const WASM32_MAX_PAGES = 65536;

/** Bytes of a guarded wasm32 reservation from the memory's base: 4 GiB addressable plus 4 GiB for the largest offset. */
export const V8_WASM32_GUARDED_BYTES_FROM_BASE = 8 * 1024 ** 3;

/** One line of /proc/<pid>/maps. Addresses are numbers (user addresses fit a double exactly). */
export interface MapsEntry {
  start: number;
  end: number;
  /** "rw-p", "---p", ... */
  perms: string;
  inode: number;
  /** The file, "[heap]", "[anon:name]", or "" for anonymous memory. */
  path: string;
}

export function parseProcMaps(text: string): MapsEntry[] {
  const entries: MapsEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    // start-end perms offset dev inode [path] — the path may hold spaces.
    const match = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) [0-9a-f]+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (!match) throw new SyntaxError(`not a /proc/<pid>/maps line: ${JSON.stringify(line)}`);
    entries.push({ start: parseInt(match[1]!, 16), end: parseInt(match[2]!, 16), perms: match[3]!, inode: Number(match[4]), path: match[5]! });
  }
  return entries;
}

export type ReservationProblem =
  /** The base is not at a 64 KiB boundary. */
  | 'unaligned-base'
  /** Part of the 8 GiB from the base is not mapped at all. */
  | 'hole'
  /** Part of it is a file mapping, shared, or named memory that is not anonymous. */
  | 'not-private-anonymous'
  /** A committed page is not read-write. */
  | 'committed-not-read-write'
  /** Past the committed bytes, something is accessible: not V8's PROT_NONE room to grow. */
  | 'room-accessible';

export type ReservationCheck =
  | { ok: true }
  | { ok: false; problem: ReservationProblem; /** Host address where the layout breaks. */ address: number; entry?: MapsEntry };

/**
 * Whether [base, base + 8 GiB) is laid out as a guarded V8 wasm32
 * reservation whose first `committedBytes` are the memory's pages.
 */
export function checkWasmReservation(maps: readonly MapsEntry[], base: number, committedBytes: number): ReservationCheck {
  if (base % WASM_PAGE_BYTES !== 0) return { ok: false, problem: 'unaligned-base', address: base };
  const end = base + V8_WASM32_GUARDED_BYTES_FROM_BASE;
  const committedEnd = base + committedBytes;
  const sorted = [...maps].sort((a, b) => a.start - b.start);
  let at = base;
  for (const entry of sorted) {
    if (entry.end <= at) continue;
    if (entry.start > at) return { ok: false, problem: 'hole', address: at };
    if (!isPrivateAnonymous(entry)) return { ok: false, problem: 'not-private-anonymous', address: at, entry };
    // The entry covers [at, min(entry.end, end)); it may straddle the committed end.
    if (at < committedEnd && entry.perms.slice(0, 3) !== 'rw-') return { ok: false, problem: 'committed-not-read-write', address: at, entry };
    const pastCommitted = Math.max(at, committedEnd);
    if (pastCommitted < Math.min(entry.end, end) && entry.perms.slice(0, 3) !== '---') {
      return { ok: false, problem: 'room-accessible', address: pastCommitted, entry };
    }
    at = entry.end;
    if (at >= end) return { ok: true };
  }
  return { ok: false, problem: 'hole', address: at };
}

function isPrivateAnonymous(entry: MapsEntry): boolean {
  return entry.perms[3] === 'p' && entry.inode === 0 && (entry.path === '' || entry.path.startsWith('[anon:'));
}
