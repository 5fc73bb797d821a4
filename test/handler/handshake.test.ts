import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  HandshakeDecoder,
  parseHandshake,
  validateHandshake,
  type HandshakeLimits,
  type HandshakeParse,
  type HandshakeProblemCode,
} from '../../src/handler/handshake.js';

const PAGE = 4096;
const MiB = 1 << 20;
const LIMITS: HandshakeLimits = { pageSizeBytes: PAGE, memoryFileSizeBytes: 8 * MiB };
const BASE = 0x7f12_3450_0000;

const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

/** What Firecracker sends for a guest with two memory regions (newer form: page_size in bytes). */
const FIRECRACKER_TWO_REGIONS = utf8(
  `[{"base_host_virt_addr":${BASE},"size":${4 * MiB},"offset":0,"page_size":4096},` +
    `{"base_host_virt_addr":${BASE + 6 * MiB},"size":${2 * MiB},"offset":${4 * MiB},"page_size":4096}]`,
);
const EXPECTED_TWO_REGIONS = [
  { hostAddress: BASE, lengthBytes: 4 * MiB, fileOffset: 0, pageSizeBytes: PAGE },
  { hostAddress: BASE + 6 * MiB, lengthBytes: 2 * MiB, fileOffset: 4 * MiB, pageSizeBytes: PAGE },
];

/** Older Firecracker's field (page_size_kib, holding bytes), pretty-printed, with a field this handler does not know. */
const OLDER_FIRECRACKER = utf8(
  `[\n  {\n    "base_host_virt_addr": ${BASE},\n    "size": ${MiB},\n    "offset": ${PAGE},\n    "page_size_kib": 4096,\n` +
    `    "note": "brackets ] } [ { and \\"quotes\\" inside a string, and ünïcödé"\n  }\n]`,
);

/** The exact bytes each Firecracker version sends, and hostile variants, kept as files (test/fixtures/handshakes/). */
function fixture(name: string): Uint8Array {
  return readFileSync(new URL(`../../../test/fixtures/handshakes/${name}.json`, import.meta.url));
}

function codes(parse: HandshakeParse): HandshakeProblemCode[] {
  assert.equal(parse.complete, true, 'the handshake should be complete');
  return parse.complete ? parse.errors.map((e) => e.code) : [];
}

function region(fields: Record<string, unknown>): Record<string, unknown> {
  return { base_host_virt_addr: BASE, size: MiB, offset: 0, page_size: PAGE, ...fields };
}

function parseValue(value: unknown, limits = LIMITS): HandshakeParse {
  return parseHandshake(utf8(JSON.stringify(value)), limits);
}

describe('the handler handshake', () => {
  test('a Firecracker handshake decodes into its regions', () => {
    const parse = parseHandshake(FIRECRACKER_TWO_REGIONS, LIMITS);
    assert.deepEqual(parse, { complete: true, regions: EXPECTED_TWO_REGIONS, errors: [], lengthBytes: FIRECRACKER_TWO_REGIONS.length });
  });

  test('the older page_size_kib form is accepted, and unknown fields and whitespace are ignored', () => {
    const parse = parseHandshake(OLDER_FIRECRACKER, LIMITS);
    assert.deepEqual(parse, {
      complete: true,
      regions: [{ hostAddress: BASE, lengthBytes: MiB, fileOffset: PAGE, pageSizeBytes: PAGE }],
      errors: [],
      lengthBytes: OLDER_FIRECRACKER.length,
    });
  });

  test('split into two reads at every offset, it completes exactly when the last byte arrives', () => {
    for (const fixture of [FIRECRACKER_TWO_REGIONS, OLDER_FIRECRACKER]) {
      const whole = parseHandshake(fixture, LIMITS);
      for (let at = 0; at <= fixture.length; at++) {
        const decoder = new HandshakeDecoder(LIMITS);
        const first = decoder.push(fixture.subarray(0, at));
        if (at < fixture.length) assert.deepEqual(first, { complete: false, bytesSeen: at }, `split at ${at}`);
        assert.deepEqual(decoder.push(fixture.subarray(at)), whole, `split at ${at}`);
      }
    }
  });

  test('fed one byte at a time (a split inside every multi-byte character too), it decodes the same', () => {
    const decoder = new HandshakeDecoder(LIMITS);
    let parse: HandshakeParse = { complete: false, bytesSeen: 0 };
    for (let i = 0; i < OLDER_FIRECRACKER.length; i++) {
      assert.equal(parse.complete, false, `complete early, at byte ${i}`);
      parse = decoder.push(OLDER_FIRECRACKER.subarray(i, i + 1));
    }
    assert.deepEqual(parse, parseHandshake(OLDER_FIRECRACKER, LIMITS));
  });

  test('a reused receive buffer does not corrupt bytes already pushed', () => {
    const decoder = new HandshakeDecoder(LIMITS);
    const buffer = new Uint8Array(16);
    let parse: HandshakeParse = { complete: false, bytesSeen: 0 };
    for (let at = 0; at < FIRECRACKER_TWO_REGIONS.length; at += buffer.length) {
      const piece = FIRECRACKER_TWO_REGIONS.subarray(at, at + buffer.length);
      buffer.set(piece);
      parse = decoder.push(buffer.subarray(0, piece.length));
      buffer.fill(0x5b);
    }
    assert.deepEqual(parse, parseHandshake(FIRECRACKER_TWO_REGIONS, LIMITS));
  });

  test('every truncation is incomplete, and refused as truncated when the stream ends', () => {
    for (let at = 0; at < FIRECRACKER_TWO_REGIONS.length; at++) {
      const decoder = new HandshakeDecoder(LIMITS);
      assert.equal(decoder.push(FIRECRACKER_TWO_REGIONS.subarray(0, at)).complete, false, `truncated at ${at}`);
      const ended = decoder.end();
      assert.deepEqual(codes(ended), ['EHANDSHAKE_TRUNCATED'], `truncated at ${at}`);
      assert.deepEqual(ended.complete && ended.regions, []);
    }
  });

  test('bytes after the closing bracket are not the handshake\'s', () => {
    const withTail = utf8(`${new TextDecoder().decode(FIRECRACKER_TWO_REGIONS)}\n{"vcpu":0}`);
    const parse = parseHandshake(withTail, LIMITS);
    assert.equal(parse.complete && parse.lengthBytes, FIRECRACKER_TWO_REGIONS.length);
    assert.deepEqual(parse.complete && parse.regions, EXPECTED_TWO_REGIONS);
  });

  test('leading whitespace is allowed; anything else that is neither an array nor a request object is refused at its first byte', () => {
    assert.equal(parseHandshake(utf8(' \n\t'), LIMITS).complete, false);
    const http = parseHandshake(utf8('GET / HTTP/1.1\r\n'), LIMITS);
    assert.deepEqual(codes(http), ['EHANDSHAKE_SHAPE']);
    assert.equal(http.complete && http.lengthBytes, 1);
    assert.match(http.complete ? http.errors[0]!.message : '', /starts with 'G'/);
    // A region without its array reads as a request object, and no request is one.
    const region = parseHandshake(utf8(`  {"base_host_virt_addr": ${BASE}, "size": 4096, "offset": 0, "page_size": 4096}`), LIMITS);
    assert.deepEqual(codes(region), ['EHANDSHAKE_REQUEST']);
    assert.match(region.complete ? region.errors[0]!.message : '', /the request \{"base_host_virt_addr":.*\.\.\. is not one this server knows/);
  });

  test('a page-cache request completes at its closing brace, with nothing of the regions taken', () => {
    const request = '{ "page_cache" : true }';
    const parse = parseHandshake(utf8(`${request}[{"base_host_virt_addr": 0`), LIMITS);
    assert.ok(parse.complete);
    assert.equal(parse.request, 'page-cache');
    assert.deepEqual(parse.errors, []);
    assert.equal(parse.lengthBytes, request.length);
    for (const other of ['{"page_cache": false}', '{"page_cache": true, "more": 1}', '{}', '{"page_cache": "yes"}']) {
      const refused = parseHandshake(utf8(other), LIMITS);
      assert.deepEqual(codes(refused), ['EHANDSHAKE_REQUEST'], other);
      assert.equal(refused.complete && refused.request, undefined, other);
    }
  });

  test('garbage inside the array is refused as not JSON', () => {
    assert.deepEqual(codes(parseHandshake(utf8('[{"base_host_virt_addr": 12, oops}]'), LIMITS)), ['EHANDSHAKE_JSON']);
    assert.deepEqual(codes(parseHandshake(utf8('[1,}'), LIMITS)), ['EHANDSHAKE_JSON']);
  });

  test('bytes that are not UTF-8 are refused as such', () => {
    const bytes = Uint8Array.of(0x5b, 0x22, 0xff, 0xfe, 0x22, 0x5d);
    assert.deepEqual(codes(parseHandshake(bytes, LIMITS)), ['EHANDSHAKE_ENCODING']);
  });

  test('an array that never closes is refused once it passes the length limit', () => {
    const limits = { ...LIMITS, maxLengthBytes: 64 };
    const decoder = new HandshakeDecoder(limits);
    assert.equal(decoder.push(utf8('[' + ' '.repeat(63))).complete, false);
    assert.deepEqual(codes(decoder.push(utf8(' '))), ['EHANDSHAKE_TOO_LONG']);
    assert.deepEqual(codes(parseHandshake(utf8(`[${' '.repeat(70)}]`), limits)), ['EHANDSHAKE_TOO_LONG']);
  });

  test('a complete decoder ignores later pushes', () => {
    const decoder = new HandshakeDecoder(LIMITS);
    const parse = decoder.push(FIRECRACKER_TWO_REGIONS);
    assert.equal(decoder.isComplete, true);
    assert.equal(decoder.push(utf8('[garbage')), parse);
    assert.equal(decoder.end(), parse);
  });
});

describe('handshake validation', () => {
  test('not an array, or an empty one, is refused', () => {
    assert.deepEqual(validateHandshake({ regions: [] }, LIMITS).errors.map((e) => e.code), ['EHANDSHAKE_SHAPE']);
    assert.match(validateHandshake([], LIMITS).errors[0]!.message, /names no regions/);
    assert.deepEqual(codes(parseValue([null, 3, [], region({})])), ['EHANDSHAKE_SHAPE', 'EHANDSHAKE_SHAPE', 'EHANDSHAKE_SHAPE']);
  });

  test('each missing field is named, with its region', () => {
    const parse = parseValue([region({}), { page_size: PAGE }]);
    assert.equal(parse.complete, true);
    const errors = parse.complete ? parse.errors : [];
    assert.deepEqual(errors.map((e) => [e.code, e.region, e.field]), [
      ['EHANDSHAKE_FIELD', 1, 'base_host_virt_addr'],
      ['EHANDSHAKE_FIELD', 1, 'size'],
      ['EHANDSHAKE_FIELD', 1, 'offset'],
    ]);
    assert.match(errors[0]!.message, /region 1: base_host_virt_addr is missing/);
    const noPageSize = parseValue([{ base_host_virt_addr: BASE, size: MiB, offset: 0 }]);
    assert.match(noPageSize.complete ? noPageSize.errors[0]!.message : '', /page_size \(or page_size_kib\) is missing/);
  });

  test('negative, fractional, string, huge and non-number values are refused', () => {
    for (const bad of [-4096, 4096.5, '4096', 2 ** 64, null, true, { n: 1 }]) {
      const parse = parseValue([region({ size: bad })]);
      assert.deepEqual(codes(parse), ['EHANDSHAKE_FIELD'], `size ${JSON.stringify(bad)}`);
      assert.equal(parse.complete && parse.errors[0]!.field, 'size');
    }
    // 1e400 parses to Infinity.
    assert.deepEqual(codes(parseHandshake(utf8(`[{"base_host_virt_addr":${BASE},"size":1e400,"offset":0,"page_size":4096}]`), LIMITS)), ['EHANDSHAKE_FIELD']);
    assert.deepEqual(codes(parseValue([region({ size: 0 })])), ['EHANDSHAKE_FIELD']);
  });

  test('an address, size or offset off the page grid is refused naming the field', () => {
    for (const field of ['base_host_virt_addr', 'size', 'offset'] as const) {
      const value = field === 'base_host_virt_addr' ? BASE + 512 : field === 'size' ? MiB + 512 : 512;
      const parse = parseValue([region({ [field]: value })]);
      assert.deepEqual(codes(parse), ['EHANDSHAKE_ALIGNMENT'], field);
      assert.equal(parse.complete && parse.errors[0]!.field, field);
    }
  });

  test('a page size other than the host page, or two that disagree, is refused', () => {
    const huge = parseValue([region({ page_size: 2 * MiB, size: 2 * MiB })]);
    assert.deepEqual(codes(huge), ['EHANDSHAKE_PAGE_SIZE']);
    assert.match(huge.complete ? huge.errors[0]!.message : '', /hugetlbfs/);
    assert.deepEqual(codes(parseValue([region({ page_size: undefined, page_size_kib: 2 * MiB, size: 2 * MiB })])), ['EHANDSHAKE_PAGE_SIZE']);
    assert.deepEqual(codes(parseValue([region({ page_size: 4096, page_size_kib: 8192 })])), ['EHANDSHAKE_PAGE_SIZE']);
  });

  describe('what each Firecracker version really sends (GuestRegionUffdMapping)', () => {
    const expected = { hostAddress: 140233452208128, lengthBytes: 128 * MiB, fileOffset: 0, pageSizeBytes: PAGE };
    const limits: HandshakeLimits = { pageSizeBytes: PAGE, memoryFileSizeBytes: 128 * MiB };
    test('before 1.8: page_size_kib alone, holding bytes (4096), is a 4 KiB page', () => {
      const parse = parseHandshake(fixture('firecracker-pre-1.8'), limits);
      assert.deepEqual(parse.complete && parse.errors, []);
      assert.deepEqual(parse.complete && parse.regions, [expected]);
    });
    test('1.8 and later: page_size and page_size_kib, both bytes, agree', () => {
      const parse = parseHandshake(fixture('firecracker-1.8'), limits);
      assert.deepEqual(parse.complete && parse.errors, []);
      assert.deepEqual(parse.complete && parse.regions, [expected]);
    });
    test('2 MiB pages (hugetlbfs guest memory) are refused as a page size, not misread as 2 GiB', () => {
      const parse = parseHandshake(fixture('firecracker-1.8-2mib-pages'), limits);
      assert.deepEqual(codes(parse), ['EHANDSHAKE_PAGE_SIZE']);
      assert.match(parse.complete ? parse.errors[0]!.message : '', /page size 2097152 bytes is not served here.*hugetlbfs/);
    });
    test('a page_size_kib of 4 (KiB units, which no Firecracker sends) is refused, saying the field holds bytes', () => {
      const parse = parseHandshake(fixture('hostile-kib-units'), limits);
      assert.deepEqual(codes(parse), ['EHANDSHAKE_PAGE_SIZE']);
      assert.match(parse.complete ? parse.errors[0]!.message : '', /page_size_kib holds bytes/);
    });
    test('page_size and page_size_kib that disagree are refused', () => {
      assert.deepEqual(codes(parseValue([region({ page_size: 4096, page_size_kib: 4 })])), ['EHANDSHAKE_PAGE_SIZE']);
    });
  });

  test('two regions that show the same file offset at different addresses are refused (each page has one state)', () => {
    const parse = parseHandshake(fixture('hostile-alias'), LIMITS);
    assert.deepEqual(codes(parse), ['EHANDSHAKE_ALIAS']);
    assert.equal(parse.complete && parse.errors[0]!.region, 1);
    assert.match(parse.complete ? parse.errors[0]!.message : '', /regions 0 and 1 both show memory-file offset 0/);
  });

  test('a 10 KB handshake nesting 5,000 arrays is refused by the scan, before JSON.parse or any message formats it', () => {
    const bytes = fixture('hostile-deep-nesting');
    assert.ok(bytes.length > 10_000);
    const parse = parseHandshake(bytes, LIMITS);
    assert.deepEqual(codes(parse), ['EHANDSHAKE_TOO_DEEP']);
    // Refused at the fifth opening bracket, not after reading it all.
    assert.ok(parse.complete && parse.lengthBytes < 100, `refused after ${parse.complete && parse.lengthBytes} bytes`);
    // Nested values that stay within the depth limit are described by kind in messages, never serialized whole.
    const nested = parseValue([region({ size: [[1]] })]);
    assert.match(nested.complete ? nested.errors[0]!.message : '', /got an array$/);
  });

  test('overlapping regions are refused, naming both', () => {
    const parse = parseValue([region({}), region({ base_host_virt_addr: BASE + 4 * MiB, offset: 2 * MiB }), region({ base_host_virt_addr: BASE + MiB - PAGE, offset: MiB })]);
    assert.deepEqual(codes(parse), ['EHANDSHAKE_OVERLAP']);
    assert.match(parse.complete ? parse.errors[0]!.message : '', /regions 0 and 2 overlap/);
    // Touching is not overlapping.
    assert.deepEqual(codes(parseValue([region({}), region({ base_host_virt_addr: BASE + MiB, offset: MiB })])), []);
  });

  test('a region whose offset and size reach past the memory file is refused', () => {
    const parse = parseValue([region({ offset: 8 * MiB - PAGE, size: 2 * PAGE })]);
    assert.deepEqual(codes(parse), ['EHANDSHAKE_BEYOND_FILE']);
    assert.match(parse.complete ? parse.errors[0]!.message : '', /past the end of the 8388608-byte memory file/);
    assert.deepEqual(codes(parseValue([region({ offset: 8 * MiB - PAGE, size: PAGE })])), []);
  });

  test('every problem is reported at once, and a refused handshake yields no regions', () => {
    const parse = parseValue([region({ size: -1 }), region({ base_host_virt_addr: BASE + 4 * MiB, offset: 9 * MiB })]);
    assert.deepEqual(codes(parse), ['EHANDSHAKE_FIELD', 'EHANDSHAKE_BEYOND_FILE']);
    assert.deepEqual(parse.complete && parse.regions, []);
  });
});
