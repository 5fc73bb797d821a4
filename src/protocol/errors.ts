// Errors of the page protocol. One class, ProtocolError, with a stable `code`
// per condition and the ERROR code a receiver answers it with (`wireCode`), so
// the peer learns why it was refused. Nothing here loads the native addon.
import { UserfaultError } from '../errors.js';
import { WireErrorCode, type WireErrorName } from './wire.js';

export type ProtocolErrorCode =
  /** A frame announces a payload larger than the receiver takes. */
  | 'EPROTO_OVERSIZED'
  /** The payload's CRC32 does not match the header's. */
  | 'EPROTO_CRC'
  /** A must-understand flag this version does not know. */
  | 'EPROTO_FLAGS'
  /** The stream ended inside a frame. */
  | 'EPROTO_TRUNCATED'
  /** A type code this version does not know. */
  | 'EPROTO_UNKNOWN_TYPE'
  /** A payload of the wrong length for its type. */
  | 'EPROTO_LENGTH'
  /** A field out of its range, or reserved bytes that are not zero. */
  | 'EPROTO_FIELD'
  /** A requestId where the type needs 0, or 0 where it needs one. */
  | 'EPROTO_REQUEST_ID'
  /** A HELLO that does not start with "USERFLT\0": not this protocol. */
  | 'EPROTO_MAGIC'
  /** A HELLO's versions are invalid (0, or a minimum above the maximum), or no version both sides speak. */
  | 'EPROTO_VERSION'
  /** The peer's HELLO declares a role this side does not take. */
  | 'EPROTO_ROLE'
  /** ERROR text that is not UTF-8. */
  | 'EPROTO_UTF8'
  /** A message not allowed in the connection's state (before HELLO, a second HELLO, a request sent to a client). */
  | 'EPROTO_UNEXPECTED'
  /** A reply whose requestId names no request outstanding on the connection. */
  | 'EPROTO_UNSOLICITED'
  /** A reply that does not match its request (another offset or length, the wrong type). */
  | 'EPROTO_MISMATCH';

const WIRE_CODES: Readonly<Record<ProtocolErrorCode, WireErrorName>> = {
  EPROTO_OVERSIZED: 'TOO_LARGE',
  EPROTO_CRC: 'BAD_FRAME',
  EPROTO_FLAGS: 'BAD_FRAME',
  EPROTO_TRUNCATED: 'BAD_FRAME',
  EPROTO_UNKNOWN_TYPE: 'UNKNOWN_TYPE',
  EPROTO_LENGTH: 'BAD_REQUEST',
  EPROTO_FIELD: 'BAD_REQUEST',
  EPROTO_REQUEST_ID: 'BAD_REQUEST',
  EPROTO_MAGIC: 'BAD_FRAME',
  EPROTO_VERSION: 'UNSUPPORTED_VERSION',
  EPROTO_ROLE: 'WRONG_ROLE',
  EPROTO_UTF8: 'BAD_REQUEST',
  EPROTO_UNEXPECTED: 'UNEXPECTED_MESSAGE',
  EPROTO_UNSOLICITED: 'UNEXPECTED_MESSAGE',
  EPROTO_MISMATCH: 'BAD_REQUEST',
};

/** Where in the stream the problem is, when known. */
export interface ProtocolErrorContext {
  /** The frame's type code. */
  frameType?: number;
  requestId?: number;
  /** The field at fault ("offset", "payloadLengthBytes"). */
  field?: string;
}

export class ProtocolError extends UserfaultError {
  override readonly code: ProtocolErrorCode;
  /** The ERROR code a receiver answers this with, before closing the connection. */
  readonly wireCode: WireErrorName;
  readonly frameType: number | undefined;
  readonly requestId: number | undefined;
  readonly field: string | undefined;

  constructor(code: ProtocolErrorCode, message: string, context: ProtocolErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.wireCode = WIRE_CODES[code];
    this.frameType = context.frameType;
    this.requestId = context.requestId;
    this.field = context.field;
  }

  /** The numeric ERROR code. */
  get wireCodeValue(): number {
    return WireErrorCode[this.wireCode];
  }
}
