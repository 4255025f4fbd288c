/**
 * The whole SvDiscover service without the process: registry, sweeper and
 * HTTP server. main.ts and the tests build it the same way; the Redis client is
 * the caller's (it opened it, it closes it).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Express } from 'express';
import { listen, boundPort, closeServer, type Logger } from '@simplechat/shared';
import { createRegistry, type Registry, type RegistryRedis } from './registry';
import { createSweeper } from './sweeper';
import { createHttpApp } from './http';

export interface DiscoverServiceDeps {
  redis: RegistryRedis;
  /** shown in errors and logs; without a password */
  redisUrl: string;
  keyPrefix: string;
  leaseMs: number;
  sweepIntervalMs: number;
  /** longest wait for one Redis reply before a request answers 503 */
  redisTimeoutMs: number;
  /** the current internal token, then optionally the previous one */
  internalTokens: readonly string[];
  log: Logger;
}

export interface DiscoverService {
  readonly app: Express;
  readonly registry: Registry;
  /** the HTTP server once listen() resolved */
  readonly server: Server | undefined;
  /** Starts the HTTP server; resolves with the bound port (pass 0 for any free port). */
  listen(port: number, host: string): Promise<number>;
  /** Stops the sweeper and the HTTP server, letting in-flight requests finish. Idempotent. */
  close(): Promise<void>;
}

export function createDiscoverService(deps: DiscoverServiceDeps): DiscoverService {
  const { log } = deps;
  const registry = createRegistry({
    redis: deps.redis,
    redisUrl: deps.redisUrl,
    keyPrefix: deps.keyPrefix,
    leaseMs: deps.leaseMs,
    commandTimeoutMs: deps.redisTimeoutMs,
    log: log.child({ component: 'registry' }),
  });
  const sweeper = createSweeper({ registry, intervalMs: deps.sweepIntervalMs, log: log.child({ component: 'sweeper' }) });
  const app = createHttpApp({ registry, internalTokens: deps.internalTokens, log: log.child({ component: 'http' }) });
  let server: Server | undefined;
  let closing: Promise<void> | undefined;

  return {
    app,
    registry,
    get server() {
      return server;
    },
    async listen(port, host) {
      if (closing) throw new Error('SvDiscover is closed');
      if (server) throw new Error('SvDiscover is already listening');
      const started = await listen(app, port, host);
      if (closing) {
        // close() ran while the port was being bound: it could not see this server
        await closeServer(started);
        throw new Error('SvDiscover is closed');
      }
      server = started;
      return boundPort(started);
    },
    close() {
      closing ??= (async () => {
        await sweeper.close();
        if (server) await closeServer(server);
      })();
      return closing;
    },
  };
}
