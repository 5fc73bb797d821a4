// Listening on a Unix socket path without destroying what is there. bind(2)
// fails with EADDRINUSE when anything exists at the path; the usual fix,
// unlink and retry, deletes a regular file someone named by mistake and
// steals the path of a live server (its clients then reach the newcomer).
// Here only a stale socket is replaced: the path must be a socket, and
// connecting to it must be refused (ECONNREFUSED: nobody listens, its
// server died without cleaning up). Shared by the page-fault handler server
// (src/handler/handler-server.ts) and the VMM's control socket
// (src/vmm-host/control-api.ts).
import { lstatSync, unlinkSync } from 'node:fs';
import { ERRNO as E, errnoName } from '../errno.js';
import { UserfaultError } from '../errors.js';
import { isNativeSyscallError, native } from '../native.js';


/** Why a socket path was refused. */
export type SocketPathProblem = 'not-a-socket' | 'in-use' | 'probe-failed';

/** Something that is not a stale socket is at the path: a file, a live server's socket. */
export class SocketPathInUseError extends UserfaultError {
  override readonly code = 'EADDRINUSE';
  constructor(readonly path: string, readonly problem: SocketPathProblem, why: string, options?: { cause?: unknown }) {
    super(`cannot listen on ${path}: ${why}`, options);
  }
}

/** bind(2) or listen(2) on the path failed for another reason than something being there (no such directory, permission). */
export class SocketPathUnusableError extends UserfaultError {
  override readonly code = 'ECANTCREATE';
  constructor(readonly path: string, readonly errno: number, why: string, options?: { cause?: unknown }) {
    super(`cannot listen on ${path}: ${why}`, options);
  }
}

/**
 * A listening, non-blocking Unix stream socket fd bound to `path`. A stale
 * socket there is replaced; anything else is refused with SocketPathInUseError.
 */
export function listenReplacingStale(path: string, backlog: number): number {
  try {
    return listen(path, backlog);
  } catch (error) {
    if ((error as { errno?: number }).errno !== E.EADDRINUSE) throw error;
  }
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    isSocket = false;
  }
  if (!isSocket) throw new SocketPathInUseError(path, 'not-a-socket', 'the path exists and is not a socket');
  let probe: number;
  try {
    probe = native.unixConnect(path);
  } catch (error) {
    const errno = (error as { errno?: number }).errno;
    if (errno !== E.ECONNREFUSED) {
      throw new SocketPathInUseError(path, 'probe-failed', `connecting to the existing socket failed: ${errno ? errnoName(errno) : String(error)}`, { cause: error });
    }
    // Nobody listens: a server died without cleaning up.
    unlinkSync(path);
    return listen(path, backlog);
  }
  native.close(probe);
  throw new SocketPathInUseError(path, 'in-use', 'another server is listening on it');
}

/** Remove the socket file at `path` if it is still the one with `inode` (never a file someone else put there since). */
export function removeSocketFile(path: string, inode: number): void {
  try {
    if (lstatSync(path).ino === inode) unlinkSync(path);
  } catch {
    // Already gone: nothing to remove.
  }
}

function listen(path: string, backlog: number): number {
  try {
    return native.unixListen(path, backlog);
  } catch (error) {
    if (!isNativeSyscallError(error)) throw error;
    if (error.errno === E.EADDRINUSE) throw error;
    const why = error.errno === E.ENOENT ? 'its directory does not exist' : error.errno === E.EACCES ? 'permission denied' : `${error.syscall} failed: ${errnoName(error.errno)}`;
    throw new SocketPathUnusableError(path, error.errno, why, { cause: error });
  }
}
