/** Test helpers: isolation per test file and polling for eventual conditions. */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, inject } from 'vitest';
import { createDatabase, dropDatabase, migrate } from '../scripts/lib/db';
import { createClient } from 'redis';
import { createLogger, createRedisConnection, type Logger, type RedisConnection } from '@simplechat/shared';
import { services } from './services';

export const INTERNAL_TOKEN = 'test-internal-token';
export const JWT_SECRET = 'test-jwt-secret-test-jwt-secret-0123456789';

/** Unique names for one test file: its Redis key prefix and queue prefix. */
export function isolation(): { keyPrefix: string; queuePrefix: string; redisUrl: string; amqpUrl: string; databaseUrl: string } {
  const tag = `t${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
  return { ...services(), databaseUrl: inject('databaseUrl'), keyPrefix: `sctest:${tag}:`, queuePrefix: `sctest.${tag}.` };
}

/**
 * A migrated database of the calling test file's own, created before its tests and dropped
 * after them (hooks registered before a cluster's run around it), for tests whose work covers
 * every conversation of the database.
 */
export function databasePerFile(name: string): string {
  const url = new URL(isolation().databaseUrl);
  url.pathname = `/sc_${name}_${randomBytes(4).toString('hex')}`;
  const databaseUrl = url.toString();
  beforeAll(async () => {
    await createDatabase(databaseUrl);
    await migrate(databaseUrl);
  });
  afterAll(() => dropDatabase(databaseUrl));
  return databaseUrl;
}

/** Polls `check` until it stops throwing, or rethrows its last error after timeoutMs. */
export async function eventually<T>(check: () => T | Promise<T>, { timeoutMs = 10_000, intervalMs = 25 } = {}): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }
}

/**
 * One test file's Redis: SimpleChat's own connection (`conn`, ready before the tests) and a
 * plain client beside it (`admin`, to look at and break keys behind the code's back). The
 * file's keys go when it ends.
 */
export function redisPerFile(iso: { redisUrl: string; keyPrefix: string }): { conn: RedisConnection; admin: ReturnType<typeof createClient> } {
  const conn = createRedisConnection({ url: iso.redisUrl, log: createLogger('test', 'silent'), commandTimeoutMs: 2000 });
  const admin = createClient({ url: iso.redisUrl });
  beforeAll(async () => {
    await admin.connect();
    await eventually(() => {
      if (!conn.client.isReady) throw new Error('Redis is not ready');
    });
  });
  afterAll(async () => {
    const keys = await admin.keys(`${iso.keyPrefix}*`);
    if (keys.length > 0) await admin.del(keys);
    await admin.quit();
    await conn.close();
  });
  return { conn, admin };
}

/** A logger whose JSON lines are kept in `lines`, for tests of what was said and at which level. */
export function captureLog(service = 'test', level: 'info' | 'debug' = 'info'): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { log: createLogger(service, level, sink), lines };
}
