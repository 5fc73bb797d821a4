// The memory file a handler serves: a snapshot in this project's format, or a
// raw file (the guest memory byte for byte, as Firecracker writes it). The
// handshake's `offset`s index the image either way: for a snapshot, its flat
// image; for a raw file, the file itself.
import { open } from 'node:fs/promises';
import { SNAPSHOT_MAGIC } from '../snapshot/format.js';
import type { PageSource } from '../sources/page-source.js';
import { RawFileSource } from '../sources/raw-file-source.js';
import { SnapshotSource } from '../sources/snapshot-source.js';
import { NotASnapshotError } from './errors.js';

export type MemoryFileKind = 'snapshot' | 'raw';

/**
 * Open `path` as a page source. 'snapshot' insists on the snapshot format;
 * 'auto' (what --memory-file means) takes a file that starts with the
 * snapshot magic as a snapshot and anything else as raw memory.
 */
export async function openMemoryFile(path: string, expect: MemoryFileKind | 'auto'): Promise<{ source: PageSource; kind: MemoryFileKind }> {
  const kind = await hasSnapshotMagic(path) ? 'snapshot' : 'raw';
  if (expect === 'snapshot' && kind !== 'snapshot') throw new NotASnapshotError(path);
  if (kind === 'snapshot') return { source: await SnapshotSource.open(path), kind };
  return { source: await RawFileSource.open(path), kind };
}

async function hasSnapshotMagic(path: string): Promise<boolean> {
  const file = await open(path, 'r');
  try {
    const head = new Uint8Array(SNAPSHOT_MAGIC.length);
    const { bytesRead } = await file.read(head, 0, head.length, 0);
    return bytesRead === head.length && head.every((byte, i) => byte === SNAPSHOT_MAGIC[i]);
  } finally {
    await file.close();
  }
}
