// One bit per image page: a Set<number>'s has/add/delete without its per-entry
// allocation and rehashing, for marks the fault path sets and clears on every
// page it installs (which pages read-ahead brought in).
export class PageFlags {
  private readonly bits: Uint8Array;

  constructor(readonly pageCount: number) {
    this.bits = new Uint8Array(Math.ceil(pageCount / 8));
  }

  has(pageIndex: number): boolean {
    return (this.bits[pageIndex >>> 3]! & (1 << (pageIndex & 7))) !== 0;
  }

  add(pageIndex: number): void {
    this.bits[pageIndex >>> 3]! |= 1 << (pageIndex & 7);
  }

  delete(pageIndex: number): void {
    this.bits[pageIndex >>> 3]! &= ~(1 << (pageIndex & 7));
  }
}
