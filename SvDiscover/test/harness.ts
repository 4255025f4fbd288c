/** Builds SvDiscover in-process on port 0 against the real Redis, with its own key prefix. */
import { createClient } from 'redis';
import { createLogger, type Logger } from '@simplechat/shared';
import { isolation, INTERNAL_TOKEN } from '../../test/helpers';
import { services } from '../../test/services';
import { createRedisConnection, type RedisConnection } from '@simplechat/shared';
import { createDiscoverService, type DiscoverService } from '../src/app';

export const PREVIOUS_TOKEN = 'test-internal-token-previous';

export interface Harness {
  service: DiscoverService;
  redis: RedisConnection;
  baseUrl: string;
  keyPrefix: string;
  leaseMs: number;
  api: Api;
  close(): Promise<void>;
}

export interface ApiReply {
  status: number;
  /** parsed JSON, or null for an empty body */
  body: unknown;
  contentType: string | null;
}

export type Api = (method: string, path: string, body?: unknown, options?: { token?: string | null; rawBody?: string }) => Promise<ApiReply>;

export function createApi(baseUrl: string): Api {
  return async (method, path, body, options = {}) => {
    const token = options.token === undefined ? INTERNAL_TOKEN : options.token;
    const headers: Record<string, string> = {};
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const payload = options.rawBody ?? (body === undefined ? undefined : JSON.stringify(body));
    if (payload !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${baseUrl}${path}`, { method, headers, body: payload, signal: AbortSignal.timeout(5_000) });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null, contentType: res.headers.get('content-type') };
  };
}

export interface StartOptions {
  leaseMs?: number;
  sweepIntervalMs?: number;
  redisUrl?: string;
  keyPrefix?: string;
  log?: Logger;
}

export async function startDiscover(options: StartOptions = {}): Promise<Harness> {
  const iso = isolation();
  const log = options.log ?? createLogger('SvDiscover', 'silent');
  const leaseMs = options.leaseMs ?? 400;
  const keyPrefix = options.keyPrefix ?? iso.keyPrefix;
  const redis = createRedisConnection({ url: options.redisUrl ?? iso.redisUrl, log, commandTimeoutMs: 1_000, maxReconnectDelayMs: 200 });
  const service = createDiscoverService({
    redis: redis.client,
    redisUrl: redis.url,
    keyPrefix,
    leaseMs,
    sweepIntervalMs: options.sweepIntervalMs ?? 100,
    redisTimeoutMs: 1_000,
    internalTokens: [INTERNAL_TOKEN, PREVIOUS_TOKEN],
    log,
  });
  const port = await service.listen(0, '127.0.0.1');
  const baseUrl = `http://127.0.0.1:${port}`;
  return {
    service,
    redis,
    baseUrl,
    keyPrefix,
    leaseMs,
    api: createApi(baseUrl),
    async close() {
      await service.close();
      await redis.close();
    },
  };
}

export type AdminRedis = ReturnType<typeof createClient>;

/** A plain client for looking at (and breaking) the keys behind the service's back. */
export async function connectAdmin(url = services().redisUrl): Promise<AdminRedis> {
  const client = createClient({ url });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

export async function keysUnder(admin: AdminRedis, prefix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const batch of admin.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) found.push(...batch);
  return found.sort();
}

export async function deleteKeysUnder(admin: AdminRedis, prefix: string): Promise<void> {
  const keys = await keysUnder(admin, prefix);
  if (keys.length > 0) await admin.del(keys);
}
