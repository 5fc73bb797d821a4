// Exit statuses of every userfault command and process, one scheme: the BSD
// sysexits.h values, so a script can tell a mistake in its own command line
// from a bad file, a missing file, a host that lacks KVM and a failure at run
// time. docs/exit-codes.md lists them with examples; the CLI and the bare VMM
// process (src/vmm-host/vmm-main.ts) both map errors through exitCodeFor.
import { UserfaultError } from './errors.js';

export const ExitCode = {
  /** Success. A guest's own done status is passed through instead where there is one. */
  OK: 0,
  /** The check the command ran found a problem (a corrupt page in `snapshot inspect`, a bad page in `demo`). */
  CHECK_FAILED: 1,
  /** EX_USAGE: the command line is wrong (unknown option, bad value, options that contradict each other). */
  USAGE: 64,
  /** EX_DATAERR: an input is malformed (truncated or corrupt snapshot, bad VM state, bad guest image). */
  DATA: 65,
  /** EX_NOINPUT: an input file does not exist or cannot be read. */
  NO_INPUT: 66,
  /** EX_UNAVAILABLE: the host lacks what the command needs (KVM, a userfaultfd feature, a peer that answers). */
  UNAVAILABLE: 69,
  /** EX_SOFTWARE: a failure at run time (the guest failed, an unexpected error). */
  SOFTWARE: 70,
  /** EX_OSERR: the operating system refused something (out of memory, no descriptors). */
  OS: 71,
  /** EX_CANTCREAT: an output file cannot be created (no such directory, not a regular file, in use). */
  CANT_CREATE: 73,
  /** EX_IOERR: reading or writing failed part way. */
  IO: 74,
  /** EX_TEMPFAIL: not done, not failed: a migration paused by a cut waits for the operator (vm migrate --resume). */
  TEMPFAIL: 75,
  /** EX_NOPERM: permission denied (/dev/kvm, /dev/userfaultfd). */
  NO_PERMISSION: 77,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/**
 * What an error means for the exit status. Library errors say which kind of
 * problem they are through their `code` (stable, documented per class); this
 * is the one table that turns kinds into statuses.
 */
const BY_CODE: Readonly<Record<string, ExitCode>> = {
  // usage
  EUSAGE: ExitCode.USAGE,
  EVMCONFIG: ExitCode.USAGE,
  EBADREQUEST: ExitCode.USAGE,
  // malformed input
  ESNAPSHOT: ExitCode.DATA,
  ESNAPSHOT_TRUNCATED: ExitCode.DATA,
  ESNAPSHOT_CORRUPT: ExitCode.DATA,
  ESNAPSHOT_VERSION: ExitCode.DATA,
  ESNAPSHOT_FORMAT: ExitCode.DATA,
  ESNAPSHOT_OBJECT: ExitCode.DATA,
  ESNAPSHOT_OBJECT_VERSION: ExitCode.DATA,
  ESNAPSHOT_CHUNK_CORRUPT: ExitCode.DATA,
  ES3_CHANGED: ExitCode.DATA,
  ESNAPSHOTINVALID: ExitCode.DATA,
  EVMSTATE: ExitCode.DATA,
  EIMAGEINVALID: ExitCode.DATA,
  ENOTSNAPSHOT: ExitCode.DATA,
  EGUESTMEM: ExitCode.USAGE,
  EKVMSTATESIZE: ExitCode.DATA,
  ESERIALFULL: ExitCode.DATA,
  EBODYTOOLARGE: ExitCode.DATA,
  // missing input
  ENOINPUT: ExitCode.NO_INPUT,
  EIMAGENOTFOUND: ExitCode.NO_INPUT,
  ES3_NOT_FOUND: ExitCode.NO_INPUT,
  // host lacks something
  ENODEPS: ExitCode.UNAVAILABLE,
  EKVMUNAVAILABLE: ExitCode.UNAVAILABLE,
  EKVMCAP: ExitCode.UNAVAILABLE,
  EFEATURE: ExitCode.UNAVAILABLE,
  ENOVM: ExitCode.UNAVAILABLE,
  EPEERUNAVAILABLE: ExitCode.UNAVAILABLE,
  EPEERREFUSED: ExitCode.UNAVAILABLE,
  ES3: ExitCode.UNAVAILABLE,
  ES3_UNAVAILABLE: ExitCode.UNAVAILABLE,
  ES3_RESPONSE: ExitCode.UNAVAILABLE,
  ES3_REQUEST: ExitCode.UNAVAILABLE,
  ESOURCEGONE: ExitCode.UNAVAILABLE,
  // a peer or the path to it is gone (any network path), or a migration peer that does not answer or refuses
  ECONNLOST: ExitCode.UNAVAILABLE,
  ESTALLED: ExitCode.UNAVAILABLE,
  ECONNENDED: ExitCode.UNAVAILABLE,
  EMIGRATIONPEER: ExitCode.UNAVAILABLE,
  EMIGRATIONLOST: ExitCode.UNAVAILABLE,
  EMIGRATIONSTALLED: ExitCode.UNAVAILABLE,
  EMIGRATIONREFUSED: ExitCode.UNAVAILABLE,
  // a migration stream or page that breaks the protocol's rules (a hostile or broken peer)
  EMIGRATIONSTREAM: ExitCode.DATA,
  EMIGRATIONREPLY: ExitCode.DATA,
  // the migration ran; its end-to-end check found pages that differ
  EMIGRATIONVERIFY: ExitCode.CHECK_FAILED,
  EIMAGECHANGED: ExitCode.DATA,
  EREMOTEVM: ExitCode.DATA,
  EKVMNOTSUP: ExitCode.UNAVAILABLE,
  // the VM is in a state that does not allow the request (409 on its control socket)
  ESTATE: ExitCode.UNAVAILABLE,
  // the OS refused
  EKVMNOMEM: ExitCode.OS,
  // output
  ECANTCREATE: ExitCode.CANT_CREATE,
  EADDRINUSE: ExitCode.CANT_CREATE,
  ENOSPACE: ExitCode.CANT_CREATE,
  // permission
  EPERM: ExitCode.NO_PERMISSION,
  EKVMACCESS: ExitCode.NO_PERMISSION,
  EKVMPERM: ExitCode.NO_PERMISSION,
  ES3_DENIED: ExitCode.NO_PERMISSION,
  EMIGRATIONAUTH: ExitCode.NO_PERMISSION,
};

export function exitCodeFor(error: unknown): ExitCode {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') {
    const mapped = BY_CODE[code];
    if (mapped !== undefined) return mapped;
    // Node's own errors for files named on the command line.
    if (code === 'ENOENT' && !(error instanceof UserfaultError)) return ExitCode.NO_INPUT;
    if ((code === 'EACCES' || code === 'EPERM') && !(error instanceof UserfaultError)) return ExitCode.NO_PERMISSION;
    if (code.startsWith('commander.')) return ExitCode.USAGE;
  }
  return ExitCode.SOFTWARE;
}
