// The byte-level reader and writer every message codec of the protocol uses
// (the page service's in messages.ts, live migration's in src/migrate/protocol):
// little-endian, bounds-checked, and every failure a ProtocolError naming the
// frame type and field.
import { ProtocolError } from './errors.js';
import { describeType } from './wire.js';

/** Where a decode is, for its errors. */
export type Context = { frameType: number; requestId: number };

export class Reader {
  private at = 0;
  private readonly view: DataView;

  constructor(private readonly payload: Uint8Array, readonly context: Context) {
    this.view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  }

  lengthExactly(lengthBytes: number): void {
    if (this.payload.length !== lengthBytes) this.lengthError(`exactly ${lengthBytes}`);
  }

  lengthAtLeast(lengthBytes: number): void {
    if (this.payload.length < lengthBytes) this.lengthError(`at least ${lengthBytes}`);
  }

  lengthBetween(min: number, max: number): void {
    if (this.payload.length < min || this.payload.length > max) this.lengthError(min === max ? `exactly ${min}` : `${min}..${max}`);
  }

  u8(): number {
    return this.view.getUint8(this.advance(1));
  }

  u16(): number {
    return this.view.getUint16(this.advance(2), true);
  }

  u32(): number {
    return this.view.getUint32(this.advance(4), true);
  }

  /** A u64 that must be a safe integer (every offset and size here is below 2^53). */
  u64(field: string): number {
    const value = this.view.getBigUint64(this.advance(8), true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw this.fieldError(field, `${field} ${value} is past 2^53`);
    return Number(value);
  }

  bytes(lengthBytes: number): Uint8Array {
    const start = this.advance(lengthBytes);
    return this.payload.subarray(start, start + lengthBytes);
  }

  rest(): Uint8Array {
    return this.bytes(this.payload.length - this.at);
  }

  reserved(lengthBytes: number, field: string): void {
    const bytes = this.bytes(lengthBytes);
    if (bytes.some((b) => b !== 0)) throw this.fieldError(field, `reserved bytes at payload offset ${this.at - lengthBytes} are not zero`);
  }

  fieldError(field: string, text: string): ProtocolError {
    return new ProtocolError('EPROTO_FIELD', `${describeType(this.context.frameType)}: ${text}`, { ...this.context, field });
  }

  private advance(lengthBytes: number): number {
    // The length checks above come first, so this only guards a decoder bug.
    if (this.at + lengthBytes > this.payload.length) this.lengthError(`more than ${this.payload.length}`);
    const start = this.at;
    this.at += lengthBytes;
    return start;
  }

  private lengthError(expected: string): never {
    throw new ProtocolError(
      'EPROTO_LENGTH',
      `a ${describeType(this.context.frameType)} payload is ${this.payload.length} bytes; its type needs ${expected}`,
      { ...this.context, field: 'payloadLengthBytes' },
    );
  }
}

export class Writer {
  private readonly out: Uint8Array;
  private readonly view: DataView;
  private at = 0;

  constructor(lengthBytes: number) {
    this.out = new Uint8Array(lengthBytes);
    this.view = new DataView(this.out.buffer);
  }

  u8(value: number): void {
    this.view.setUint8(this.at, value);
    this.at += 1;
  }

  u16(value: number): void {
    this.view.setUint16(this.at, value, true);
    this.at += 2;
  }

  u32(value: number): void {
    this.view.setUint32(this.at, value, true);
    this.at += 4;
  }

  u64(value: number): void {
    this.view.setBigUint64(this.at, BigInt(value), true);
    this.at += 8;
  }

  bytes(value: Uint8Array): void {
    this.out.set(value, this.at);
    this.at += value.length;
  }

  zeros(lengthBytes: number): void {
    this.at += lengthBytes;
  }

  done(): Uint8Array {
    return this.out;
  }
}

