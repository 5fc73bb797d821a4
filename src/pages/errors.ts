// Errors of the page server and its client. One base class, a stable code each.
import { UserfaultError } from '../errors.js';

export class PageServerError extends UserfaultError {
  override readonly code: string = 'EPAGESERVER';
}

/**
 * A non-loopback listen address without allowRemote: the pages are the VM's
 * memory (keys, passwords), and the protocol has no authentication or
 * encryption, so serving them beyond this host must be asked for explicitly.
 * Code EUSAGE: the caller's options are wrong (exit status 64 from the CLI).
 */
export class RemoteListenRefusedError extends PageServerError {
  override readonly code = 'EUSAGE';
  constructor(readonly host: string) {
    super(
      `${host} is not a loopback address: serving pages there lets anyone who can reach it read the VM's memory ` +
        '(the protocol has no authentication or encryption); pass --allow-remote (allowRemote: true) to mean it',
    );
  }
}

/** No page server answered at the address (refused, unreachable, or no HELLO in time). */
export class PeerUnavailableError extends PageServerError {
  override readonly code = 'EPEERUNAVAILABLE';
  constructor(readonly url: string, reason: string, options?: { cause?: unknown }) {
    super(`no page server at ${url}: ${reason}`, options);
  }
}

/** The page server answered the HELLO with an ERROR (another version, a role it does not take). */
export class PeerRefusedError extends PageServerError {
  override readonly code = 'EPEERREFUSED';
  constructor(readonly url: string, readonly wireCode: string, readonly text: string) {
    super(`the page server at ${url} refused the connection: ${wireCode}: ${text}`);
  }
}

/** A page server reconnected to serves another image than before (size, page size or image id changed). */
export class ImageChangedError extends PageServerError {
  override readonly code = 'EIMAGECHANGED';
  constructor(readonly url: string, what: string) {
    super(`the page server at ${url} now serves another image: ${what}`);
  }
}
