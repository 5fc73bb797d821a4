// `--metrics HOST:PORT`: the process's metrics on a TCP port Prometheus can
// scrape (GET /metrics, the text format). Loopback unless the command was
// given its explicit flag. Read-only, and bounded like every endpoint here
// (src/net/http-server.ts): a Host that does not name this server is refused
// (DNS rebinding), and idle or slow peers cannot keep a scrape out.
import type { Server } from 'node:http';
import { closeHttp, createBoundedHttpServer, listenHttp, sendText, type BoundedHttpServerOptions } from '../net/http-server.js';
import { formatHostPort, type HostPort } from '../net/address.js';
import { PROMETHEUS_CONTENT_TYPE, registryOf, type RegistryRef } from './metrics-registry.js';

export interface MetricsServer {
  readonly server: Server;
  /** Where it listens (with port 0: the port the kernel chose). */
  readonly address: HostPort;
  /** "http://127.0.0.1:9100/metrics". */
  readonly url: string;
  close(): Promise<void>;
}

/** Connection bounds and host names (tests shorten the timeouts); the defaults are http-server.ts's. */
export type MetricsServerOptions = Pick<BoundedHttpServerOptions, 'bounds' | 'hostNames'> & {
  /** The option the address was given with, named when it is taken (default --metrics). */
  option?: string;
};

export async function startMetricsServer(registry: RegistryRef, address: HostPort, options: MetricsServerOptions = {}): Promise<MetricsServer> {
  const { option = '--metrics', ...serverOptions } = options;
  const server = createBoundedHttpServer({
    ...serverOptions,
    routes: {
      '/metrics': {
        methods: ['GET'],
        handle: async (_req, res) => sendText(res, 200, await registryOf(registry).scrape(), { contentType: PROMETHEUS_CONTENT_TYPE }),
      },
    },
  });
  const bound = await listenHttp(server, address, option);
  return { server, address: bound, url: `http://${formatHostPort(bound)}/metrics`, close: () => closeHttp(server) };
}
