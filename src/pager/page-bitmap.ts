// One bit per page, the project's one bitset: the pager's marks on the fault
// path (which pages read-ahead brought in: a Set<number>'s has/add/delete
// without its per-entry allocation), and a migration's dirty pages (KVM's
// dirty log has this layout: bit i of the little-endian u64 words is page i of
// the slot), pages received, pages known zero. Plain bytes, so a bitmap goes
// on the wire or to KVM as it is.
export class PageBitmap {
  readonly bytes: Uint8Array;
  constructor(readonly pageCount: number, bytes?: Uint8Array) {
    // Whole u64 words: KVM_GET_DIRTY_LOG writes them.
    const length = Math.ceil(pageCount / 64) * 8;
    if (bytes && bytes.length < Math.ceil(pageCount / 8)) throw new RangeError(`a bitmap of ${pageCount} pages needs ${Math.ceil(pageCount / 8)} bytes, got ${bytes.length}`);
    this.bytes = bytes ?? new Uint8Array(length);
  }

  /** One byte a page, 1 where the bit is set: a whole byte of bits at a time. */
  toByteMask(): Uint8Array {
    const mask = new Uint8Array(this.pageCount);
    const { bytes, pageCount } = this;
    for (let i = 0; i < bytes.length; i++) {
      const byte = bytes[i]!;
      if (byte === 0) continue;
      const base = i * 8;
      for (let bit = 0; bit < 8 && base + bit < pageCount; bit++) if (byte & (1 << bit)) mask[base + bit] = 1;
    }
    return mask;
  }

  /** This bitmap's bits and not `other`'s, as a new bitmap (bytewise). */
  andNot(other: PageBitmap): PageBitmap {
    const out = new PageBitmap(this.pageCount);
    const n = Math.min(this.bytes.length, other.bytes.length);
    for (let i = 0; i < this.bytes.length; i++) out.bytes[i] = i < n ? this.bytes[i]! & ~other.bytes[i]! : this.bytes[i]!;
    return out;
  }

  get(page: number): boolean {
    return (this.bytes[page >>> 3]! & (1 << (page & 7))) !== 0;
  }

  set(page: number): void {
    this.bytes[page >>> 3]! |= 1 << (page & 7);
  }

  clear(page: number): void {
    this.bytes[page >>> 3]! &= ~(1 << (page & 7));
  }

  setAll(): void {
    this.bytes.fill(0xff);
    this.trimTail();
  }

  clearAll(): void {
    this.bytes.fill(0);
  }

  /** this |= other. */
  or(other: PageBitmap): void {
    const n = Math.min(this.bytes.length, other.bytes.length);
    for (let i = 0; i < n; i++) this.bytes[i]! |= other.bytes[i]!;
    this.trimTail();
  }

  count(): number {
    let n = 0;
    for (const byte of this.bytes) n += POPCOUNT[byte]!;
    return n;
  }

  /** The first set page at or after `from`, or -1 (whole empty bytes are skipped). */
  nextSet(from: number): number {
    const { bytes } = this;
    if (from >= this.pageCount) return -1;
    let i = from >>> 3;
    let byte = bytes[i]! & (0xff << (from & 7));
    while (byte === 0) {
      if (++i >= bytes.length) return -1;
      byte = bytes[i]!;
    }
    const page = i * 8 + (31 - Math.clz32(byte & -byte));
    return page < this.pageCount ? page : -1;
  }

  /** Set pages in ascending order (fast over empty stretches). */
  *pages(): Generator<number> {
    const { bytes } = this;
    for (let i = 0; i < bytes.length; i++) {
      let byte = bytes[i]!;
      while (byte !== 0) {
        const bit = 31 - Math.clz32(byte & -byte);
        const page = i * 8 + bit;
        if (page >= this.pageCount) return;
        yield page;
        byte &= byte - 1;
      }
    }
  }

  /** Runs of consecutive set pages, each at most maxRun long: [first, count]. */
  *runs(maxRun = Number.MAX_SAFE_INTEGER): Generator<[number, number]> {
    let first = -1;
    let count = 0;
    for (const page of this.pages()) {
      if (count > 0 && page === first + count && count < maxRun) {
        count++;
        continue;
      }
      if (count > 0) yield [first, count];
      first = page;
      count = 1;
    }
    if (count > 0) yield [first, count];
  }

  copy(): PageBitmap {
    return new PageBitmap(this.pageCount, this.bytes.slice());
  }

  /** Bits past pageCount stay clear, so count() and the wire form are exact. */
  private trimTail(): void {
    for (let page = this.pageCount; page < this.bytes.length * 8; page++) this.clear(page);
  }
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, byte) => {
  let n = 0;
  for (let b = byte; b; b &= b - 1) n++;
  return n;
});
