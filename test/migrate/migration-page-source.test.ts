// The destination's post-copy page source checks every page against the
// CRC32C the source computed for it before a byte reaches the pager: a page
// altered on the way is refused naming it, and its read's target is untouched.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MigrationPageSource } from '../../src/migrate/migration-page-source.js';
import { PageBitmap } from '../../src/migrate/page-bitmap.js';
import { PageDigestTable } from '../../src/migrate/page-digests.js';
import type { MigrationConnection } from '../../src/migrate/transport/migration-connection.js';
import { crc32c } from '../../src/checksum/crc32c.js';
import { MigrationPageChecksumError } from '../../src/migrate/errors.js';

const PAGE = 4096;
const PAGES = 16;

/** A connection that records what is sent on it (the source's side is not needed to check a reply). */
function recordingConnection(): MigrationConnection & { sent: Array<{ message: { type: string }; requestId: number }> } {
  const sent: Array<{ message: { type: string }; requestId: number }> = [];
  return { sent, isEnded: false, send: async (message: { type: string }, requestId: number) => void sent.push({ message, requestId }) } as unknown as MigrationConnection & { sent: typeof sent };
}

function pageOf(value: number): Uint8Array {
  return new Uint8Array(PAGE).fill(value);
}

describe('the post-copy page source', () => {
  test('a demanded page whose bytes do not match its checksum is refused naming it, the read\'s target untouched; the right page is taken', async () => {
    const digests = new PageDigestTable(PAGES, PAGE);
    const source = new MigrationPageSource(PAGES * PAGE, PAGE, new PageBitmap(PAGES), digests, 'test');
    const connection = recordingConnection();
    source.attach(connection, connection);
    const target = new Uint8Array(PAGE);
    const read = source.read(3 * PAGE, PAGE, target);
    const { requestId } = connection.sent[0]!;
    const good = pageOf(7);
    const altered = pageOf(7);
    altered[100] = 8;
    assert.throws(() => source.handle({ type: 'checked-pages', offset: 3 * PAGE, checksums: Uint32Array.of(crc32c(good)), data: altered }, requestId, connection), (error: unknown) => error instanceof MigrationPageChecksumError && error.page === 3);
    assert.ok(target.every((byte) => byte === 0), 'nothing of the altered page reached the target');
    assert.equal(digests.crcOf(3), undefined, 'not recorded as installed');
    // The same READ answered right (as after the reconnect the refusal causes).
    source.handle({ type: 'checked-pages', offset: 3 * PAGE, checksums: Uint32Array.of(crc32c(good)), data: good }, requestId, connection);
    await read;
    assert.deepEqual(target, good);
    assert.equal(digests.crcOf(3), crc32c(good));
  });

  test('a pushed run with one altered page is refused whole, naming that page; nothing of it is handed to the pager', () => {
    const source = new MigrationPageSource(PAGES * PAGE, PAGE, new PageBitmap(PAGES), new PageDigestTable(PAGES, PAGE), 'test');
    const pushed: unknown[] = [];
    source.onPush((pages) => pushed.push(pages));
    const pages = [pageOf(1), pageOf(2), pageOf(3)];
    const checksums = Uint32Array.from(pages.map((p) => crc32c(p)));
    const data = new Uint8Array(3 * PAGE);
    pages.forEach((p, i) => data.set(p, i * PAGE));
    data[PAGE + 5] = 9;
    assert.throws(() => source.handle({ type: 'mig-push', firstPage: 4, checksums, data }, 0, recordingConnection()), (error: unknown) => error instanceof MigrationPageChecksumError && error.page === 5);
    assert.equal(pushed.length, 0);
  });
});
