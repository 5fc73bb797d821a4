// A 16550A-compatible UART (COM1 at 0x3f8, IRQ 4), as much of it as a console
// needs: transmit is instant (THR is always empty, so the guest never waits),
// receive has a 16-byte FIFO fed by enqueueInput, interrupts for received
// data and THR empty follow IER, and loopback works. Pure: output and the
// interrupt line go to callbacks; saveState/restoreState give a plain state
// (persist/vm-state.ts puts it in the snapshot).
//
// Input waiting behind the FIFO (a terminal pastes, the control socket sends
// faster than the guest reads) is bounded: at most SERIAL_INPUT_LIMIT_BYTES
// wait in all; input that would pass the bound is refused whole
// (SerialInputFullError; 413 on the control socket), never cut or dropped.
//
// Registers (offset from the base port; DLAB = LCR bit 7):
//   0  RBR (read) | THR (write) | DLL when DLAB    4  MCR
//   1  IER | DLM when DLAB                          5  LSR (read)
//   2  IIR (read) | FCR (write)                     6  MSR (read)
//   3  LCR                                          7  SCR
import { SerialInputFullError } from '../../errors.js';
import type { PortIoDevice } from '../port-io.js';
import { ByteQueue } from './byte-queue.js';

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
/** Bytes that may wait for the guest to read them, the receive FIFO included. */
export const SERIAL_INPUT_LIMIT_BYTES = 1 << 20;

const IER_RX_AVAILABLE = 0x01;
const IER_THR_EMPTY = 0x02;
const IIR_NONE = 0x01;
const IIR_THR_EMPTY = 0x02;
const IIR_RX_AVAILABLE = 0x04;
const IIR_FIFO_ENABLED = 0xc0;
const LCR_DLAB = 0x80;
const LSR_DATA_READY = 0x01;
const LSR_OVERRUN = 0x02;
const LSR_THR_EMPTY = 0x20;
const LSR_TX_EMPTY = 0x40;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
const MSR_DCD_DSR_CTS = 0xb0;
const RX_FIFO_BYTES = 16;

/** Everything the UART holds (the snapshot's `uart` field; persist/vm-state.ts encodes it). */
export interface UartState {
  dll: number;
  dlm: number;
  ier: number;
  lcr: number;
  mcr: number;
  fcr: number;
  scr: number;
  lsrErrors: number;
  /** A THR-empty interrupt is pending (raised by a write, cleared by reading IIR or writing THR). */
  thrEmptyPending: boolean;
  /** Bytes in the receive FIFO, then the bytes queued behind it (at most SERIAL_INPUT_LIMIT_BYTES). */
  rx: Uint8Array;
}

export interface UartCallbacks {
  /** Bytes the guest transmitted. */
  output(bytes: Uint8Array): void;
  /** The level of the UART's interrupt line changed. */
  interrupt?(level: boolean): void;
}

/** The registers, with the receive FIFO (at most 16 bytes) as a small array. */
type Registers = Omit<UartState, 'rx'> & { rx: number[] };

export class Uart16550 implements PortIoDevice {
  private s: Registers = { dll: 1, dlm: 0, ier: 0, lcr: 0x03, mcr: MCR_OUT2, fcr: 0, scr: 0, lsrErrors: 0, thrEmptyPending: false, rx: [] };
  /** Input beyond the FIFO waits here (a terminal can paste faster than the guest reads). */
  private readonly backlog = new ByteQueue();
  private irqLevel = false;

  constructor(private readonly callbacks: UartCallbacks) {}

  /** Bytes waiting for the guest: the FIFO and the backlog behind it. */
  get queuedInputBytes(): number {
    return this.s.rx.length + this.backlog.lengthBytes;
  }

  /** Queue bytes for the guest to receive; SerialInputFullError (nothing queued) when they would pass the bound. */
  enqueueInput(bytes: Uint8Array): void {
    const queued = this.queuedInputBytes;
    if (queued + bytes.byteLength > SERIAL_INPUT_LIMIT_BYTES) throw new SerialInputFullError(bytes.byteLength, queued, SERIAL_INPUT_LIMIT_BYTES);
    this.backlog.push(bytes);
    this.refill();
    this.updateInterrupt();
  }

  read(offset: number, _size = 1): number {
    const s = this.s;
    switch (offset) {
      case 0: {
        if (s.lcr & LCR_DLAB) return s.dll;
        const byte = s.rx.shift() ?? 0;
        this.refill();
        this.updateInterrupt();
        return byte;
      }
      case 1:
        return s.lcr & LCR_DLAB ? s.dlm : s.ier;
      case 2: {
        const iir = this.currentIir();
        if (iir === IIR_THR_EMPTY) s.thrEmptyPending = false; // reading IIR acknowledges THR empty
        this.updateInterrupt();
        return iir | (s.fcr & FCR_ENABLE ? IIR_FIFO_ENABLED : 0);
      }
      case 3:
        return s.lcr;
      case 4:
        return s.mcr;
      case 5: {
        const lsr = LSR_THR_EMPTY | LSR_TX_EMPTY | (s.rx.length > 0 ? LSR_DATA_READY : 0) | s.lsrErrors;
        s.lsrErrors = 0;
        return lsr;
      }
      case 6:
        // Loopback wires MCR's outputs back to the modem status inputs; otherwise a cable is "present".
        return s.mcr & MCR_LOOP ? ((s.mcr & 0x0f) << 4) : MSR_DCD_DSR_CTS;
      case 7:
        return s.scr;
      default:
        return 0xff;
    }
  }

  write(offset: number, _size: number, value: number): void {
    const s = this.s;
    const v = value & 0xff;
    switch (offset) {
      case 0:
        if (s.lcr & LCR_DLAB) {
          s.dll = v;
          return;
        }
        if (s.mcr & MCR_LOOP) {
          this.receive(v);
        } else {
          this.callbacks.output(Uint8Array.of(v));
        }
        s.thrEmptyPending = true; // the byte left at once: THR is empty again
        break;
      case 1:
        if (s.lcr & LCR_DLAB) {
          s.dlm = v;
          return;
        }
        // Enabling THR-empty interrupts with THR empty raises one at once.
        if (!(s.ier & IER_THR_EMPTY) && v & IER_THR_EMPTY) s.thrEmptyPending = true;
        s.ier = v & 0x0f;
        break;
      case 2:
        s.fcr = v & 0xc1;
        if (v & FCR_CLEAR_RX) s.rx.length = 0;
        break;
      case 3:
        s.lcr = v;
        return;
      case 4:
        s.mcr = v & 0x1f;
        break;
      case 7:
        s.scr = v;
        return;
      default:
        return;
    }
    this.updateInterrupt();
  }

  saveState(): UartState {
    const backlog = this.backlog.toBytes();
    const rx = new Uint8Array(this.s.rx.length + backlog.byteLength);
    rx.set(this.s.rx);
    rx.set(backlog, this.s.rx.length);
    return { ...this.s, rx };
  }

  /** Load a saved state (checked by persist/vm-state.ts's schema): the first 16 bytes go to the FIFO, the rest behind it. */
  restoreState(state: UartState): void {
    const fifo = Math.min(RX_FIFO_BYTES, state.rx.byteLength);
    this.s = { ...state, rx: Array.from(state.rx.subarray(0, fifo)) };
    this.backlog.clear();
    this.backlog.push(state.rx.subarray(fifo));
    this.irqLevel = false;
    this.updateInterrupt();
  }

  private receive(byte: number): void {
    if (this.s.rx.length >= RX_FIFO_BYTES) {
      this.s.lsrErrors |= LSR_OVERRUN;
      return;
    }
    this.s.rx.push(byte);
  }

  private refill(): void {
    while (this.s.rx.length < RX_FIFO_BYTES && this.backlog.lengthBytes > 0) this.s.rx.push(this.backlog.shift()!);
  }

  private currentIir(): number {
    const s = this.s;
    if (s.ier & IER_RX_AVAILABLE && s.rx.length > 0) return IIR_RX_AVAILABLE;
    if (s.ier & IER_THR_EMPTY && s.thrEmptyPending) return IIR_THR_EMPTY;
    return IIR_NONE;
  }

  private updateInterrupt(): void {
    // On a PC the UART's IRQ reaches the PIC only through the OUT2 gate.
    const level = this.currentIir() !== IIR_NONE && (this.s.mcr & MCR_OUT2) !== 0;
    if (level === this.irqLevel) return;
    this.irqLevel = level;
    this.callbacks.interrupt?.(level);
  }
}
