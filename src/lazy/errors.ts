// Conditions under which a WebAssembly memory cannot be made lazy, refused
// with what was seen (see wasm-reservation.ts for the layout they refer to).
import { UserfaultError } from '../errors.js';
import type { MapsEntry, ReservationProblem } from './wasm-reservation.js';

/**
 * The memory V8 made is not a guarded wasm32 reservation: growing it could
 * copy it to a new address, where no page would be served from the source
 * (it would read zero). Refused rather than served wrong.
 */
export class WasmReservationError extends UserfaultError {
  override readonly code = 'EWASMRESERVATION';
  constructor(readonly problem: ReservationProblem, readonly baseAddress: number, readonly address: number, readonly entry?: MapsEntry) {
    super(
      `the WebAssembly.Memory at 0x${baseAddress.toString(16)} is not laid out as V8's guarded wasm32 reservation ` +
        `(${problem} at base+0x${(address - baseAddress).toString(16)}${entry ? `: ${entry.perms} ${entry.path || 'anonymous'}` : ''}); ` +
        'its growth could move it, so it cannot be served lazily',
    );
  }
}

/**
 * Pages of a new memory were already resident when it was to be registered:
 * V8 wrote them, and a MISSING registration never faults a present page, so
 * they would show V8's bytes instead of the source's.
 */
export class WasmPagesTouchedError extends UserfaultError {
  override readonly code = 'EWASMTOUCHED';
  constructor(readonly residentPageOffsets: readonly number[]) {
    super(`${residentPageOffsets.length} page(s) of the new WebAssembly.Memory were already resident (first at byte ${residentPageOffsets[0]}); they would not show the source`);
  }
}

/**
 * LazyMemory was given a source it cannot open in its pager's worker thread:
 * a PageSource object (a FunctionSource, say: functions do not cross to
 * another thread) or a description of an unknown kind. Says what it takes.
 */
export class SourceSpecError extends UserfaultError {
  override readonly code = 'EUSAGE';
  constructor(what: string) {
    super(
      `${what}: LazyMemory's pager runs in a worker thread, so its source is described as data ` +
        "({ kind: 'zero' | 'buffer' | 'snapshot' | 'raw-file' | 'remote' | 's3' }), or as { kind: 'module', url } " +
        'whose createSource() makes any PageSource (a FunctionSource too) inside the worker',
    );
  }
}
