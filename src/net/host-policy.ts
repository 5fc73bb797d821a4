// Which requests a TCP HTTP endpoint (a --metrics port, the dashboard) takes,
// by their Host and Origin headers. Pure: headers in, a verdict out.
//
// DNS rebinding: a web page at http://evil.example:9100/ whose name the
// attacker then re-points at 127.0.0.1 gets the victim's browser to send its
// requests to our loopback port — as same-origin requests, so the page reads
// the answers (the metrics, the guest's memory map). The one thing it cannot
// change is the Host header: the browser sends the name the page was loaded
// from, "evil.example:9100". So a server answers only Hosts that cannot be
// the attacker's name:
//
//   always          localhost, loopback IP literals (127.0.0.0/8, [::1]), with
//                   or without a port, and the exact address listened on
//   remote allowed  (listening on an address other hosts reach, which the
//                   CLI allows only with --allow-remote / --metrics-allow-remote)
//                   also any IP literal, and the names given (the machine's
//                   own host name by default): no attacker's DNS answers for
//                   an IP literal, and a name of ours resolves by our DNS
//   otherwise       421 Misdirected Request, with the reason
//
// No Host at all: only HTTP/1.0 may omit it (Node answers HTTP/1.1 without
// one 400 itself) and no browser does, so it is not a rebinding and is taken.
//
// Origin: a browser names the page behind a cross-origin request (and a
// same-origin one that is not a GET). One that is not http://<Host> is
// another site's script — refused 403, except a GET or HEAD of a page (the
// dashboard's own document, which another site may link to; it cannot read
// the answer). The dashboard's page asks only its own origin
// (EventSource('/events'), same-origin), so its requests pass.
import { isIP } from 'node:net';
import { isLoopbackHost } from '../net/address.js';

export interface HostPolicy {
  /** The address listened on (as bound: an IP). */
  listenHost: string;
  /** Also take any IP literal and the names below (the server was allowed to be reached remotely). */
  remote: boolean;
  /** Names taken when remote (lower case, no port), e.g. the machine's host name. */
  names?: readonly string[];
}

export type HostVerdict = { ok: true } | { ok: false; status: 421 | 403; reason: string };

/** A Host header split: the host name (lower case, IPv6 without brackets) and the port if given; undefined when malformed. */
export function parseHostHeader(value: string): { hostname: string; port?: number } | undefined {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._~%!$&'()*+,;=-]+))(?::(\d{0,5}))?$/.exec(value);
  if (!match) return undefined;
  if (match[1] !== undefined && isIP(match[1]) !== 6) return undefined;
  const port = match[3] === undefined || match[3] === '' ? undefined : Number(match[3]);
  if (port !== undefined && port > 65535) return undefined;
  return { hostname: (match[1] ?? match[2])!.toLowerCase(), ...(port === undefined ? {} : { port }) };
}

/** Whether a request with these headers may be answered: its Host first, then its Origin. */
export function checkHostAndOrigin(
  headers: { host?: string; origin?: string },
  request: { method: string; isPage: boolean },
  policy: HostPolicy,
): HostVerdict {
  const host = headers.host;
  if (host !== undefined) {
    const parsed = parseHostHeader(host);
    if (!parsed || !hostTaken(parsed.hostname, policy)) {
      const taken = policy.remote ? 'localhost, an IP address or this machine\'s names' : 'localhost, 127.0.0.1 or [::1]';
      return { ok: false, status: 421, reason: `this server answers to ${taken}, not Host ${JSON.stringify(host.slice(0, 100))}: a request for another name is how a web page reaches a local server by DNS rebinding` };
    }
  }
  const origin = headers.origin;
  if (origin === undefined || sameOrigin(origin, host)) return { ok: true };
  if ((request.method === 'GET' || request.method === 'HEAD') && request.isPage) return { ok: true };
  return { ok: false, status: 403, reason: `a request from another site's page (Origin ${JSON.stringify(origin.slice(0, 100))}) is refused: only this server's own page may ask it` };
}

function hostTaken(hostname: string, policy: HostPolicy): boolean {
  if (isLoopbackHost(hostname)) return true;
  if (hostname === policy.listenHost.toLowerCase()) return true;
  if (!policy.remote) return false;
  return isIP(hostname) !== 0 || (policy.names ?? []).includes(hostname);
}

/** Origin is http://<Host>, ports and case normalised ("http://LOCALHOST:80" is Host "localhost"). */
function sameOrigin(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false;
  try {
    const from = new URL(origin);
    return from.protocol === 'http:' && from.host === new URL(`http://${host}`).host;
  } catch {
    return false; // "null" (a sandboxed frame, a file), or not a URL
  }
}
