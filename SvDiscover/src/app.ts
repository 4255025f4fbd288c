/**
 * The whole SvDiscover service without the process: registry, sweeper and
 * HTTP server. main.ts and the tests build it the same way; the Redis client is
 * the caller's (it opened it, it closes it).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Express } from 'express';
import { listen, boundPort, closeServer, createLifecycle, createMetrics, withDeadline, type Logger, type Metrics } from '@simplechat/shared';
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
  /** main.ts passes one with process metrics; otherwise a fresh registry */
  metrics?: Metrics;
}

export interface DiscoverService {
  readonly app: Express;
  readonly registry: Registry;
  readonly metrics: Metrics;
  /** the HTTP server once listen() resolved */
  readonly server: Server | undefined;
  /** Starts the HTTP server; resolves with the bound port (pass 0 for any free port). */
  listen(port: number, host: string): Promise<number>;
  /** Stops the sweeper and the HTTP server, letting in-flight requests finish. Idempotent. */
  close(): Promise<void>;
}

export function createDiscoverService(deps: DiscoverServiceDeps): DiscoverService {
  const { log } = deps;
  const lifecycle = createLifecycle(log);
  const registry = createRegistry({
    redis: deps.redis,
    redisUrl: deps.redisUrl,
    keyPrefix: deps.keyPrefix,
    leaseMs: deps.leaseMs,
    commandTimeoutMs: deps.redisTimeoutMs,
    log: log.child({ component: 'registry' }),
  });
  const metrics = deps.metrics ?? createMetrics({ service: 'SvDiscover' });
  const lookupUsers = metrics.counter('discover_lookup_users_total', 'Users asked about in lookups.');
  const lookupFound = metrics.counter('discover_lookup_found_total', 'Looked-up users that had at least one live instance.');
  const swept = metrics.counter('discover_swept_instances_total', 'Instances whose lease lapsed without goodbye, removed by the sweeper.');
  const counted: Registry = {
    ...registry,
    async lookup(users) {
      const found = await registry.lookup(users);
      lookupUsers.inc(users.length);
      let n = 0;
      for (const refs of found.values()) if (refs.length > 0) n++;
      lookupFound.inc(n);
      return found;
    },
    async sweep() {
      const ids = await registry.sweep();
      swept.inc(ids.length);
      return ids;
    },
  };
  const isRedisUp = () => withDeadline(registry.isUp(), deps.redisTimeoutMs, false);
  metrics.dependencies(async () => ({ redis: await isRedisUp() }));
  const sweeper = createSweeper({ registry: counted, intervalMs: deps.sweepIntervalMs, log: log.child({ component: 'sweeper' }) });
  lifecycle.add('sweeper', () => sweeper.close());
  let server: Server | undefined;
  const app = createHttpApp({
    registry: counted,
    internalTokens: deps.internalTokens,
    log: log.child({ component: 'http' }),
    metrics,
    async ready() {
      if (lifecycle.isClosing) return { ready: false, reason: 'shutting down' };
      const redis = await isRedisUp();
      return redis ? { ready: true, checks: { redis } } : { ready: false, reason: 'Redis does not answer', checks: { redis } };
    },
  });

  return {
    app,
    registry,
    metrics,
    get server() {
      return server;
    },
    async listen(port, host) {
      if (lifecycle.isClosing) throw new Error('SvDiscover is closed');
      if (server) throw new Error('SvDiscover is already listening');
      const started = await listen(app, port, host);
      if (lifecycle.isClosing) {
        // close() ran while the port was being bound: it could not see this server
        await closeServer(started);
        throw new Error('SvDiscover is closed');
      }
      server = started;
      lifecycle.add('HTTP server', () => closeServer(started));
      return boundPort(started);
    },
    close: () => lifecycle.close(),
  };
}
