// Eager restore: the whole image into guest RAM before any vCPU runs, from
// any page source. Chunks the source knows to be zero are skipped (fresh
// anonymous memory reads zero already); the others are read straight into
// guest memory, a few at a time so a network source's latency overlaps.
import type { PageSource } from '../../sources/page-source.js';
import type { GuestMemory } from './guest-memory.js';

const CHUNK_BYTES = 2 << 20;
const READS_IN_FLIGHT = 8;

/** `onProgress` is told the bytes of guest RAM loaded so far (zero chunks count: they are done) after each chunk. */
export async function loadGuestMemory(memory: GuestMemory, source: PageSource, onProgress?: (loadedBytes: number, totalBytes: number) => void): Promise<void> {
  const image = memory.image();
  let next = 0;
  let loaded = 0;
  const worker = async (): Promise<void> => {
    while (next < memory.lengthBytes) {
      const offset = next;
      const length = Math.min(CHUNK_BYTES, memory.lengthBytes - offset);
      next += length;
      if (!source.isZero?.(offset, length)) await source.read(offset, length, image.subarray(offset, offset + length), { priority: 'background' });
      loaded += length;
      onProgress?.(loaded, memory.lengthBytes);
    }
  };
  // The first failure wins; the other readers stop at their next chunk.
  const readers = Array.from({ length: READS_IN_FLIGHT }, () => worker());
  try {
    await Promise.all(readers);
  } catch (error) {
    next = memory.lengthBytes;
    await Promise.allSettled(readers);
    throw error;
  }
}
