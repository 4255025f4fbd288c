import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sequelize } from 'sequelize';
import type { Envelope } from '@simplechat/shared';
import { eventually, isolation } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStore, type Store } from '../src/store';
import { createWriter, type Writer } from '../src/writer';
import { captureLog, createTestBroker, getJson, makeMessage, rowsOf, silentLog, startService, uniqueTag, type TestBroker } from './support';

const iso = isolation();
/** Nothing listens there: connections are refused at once. */
const DEAD_POSTGRES = 'postgres://postgres@127.0.0.1:1/nothing';
const DEAD_RABBITMQ = 'amqp://guest:guest@127.0.0.1:1';

let broker: TestBroker;
let sequelize: Sequelize;
let store: Store;

beforeAll(async () => {
  broker = await createTestBroker(iso.amqpUrl, iso.queuePrefix);
  sequelize = createSequelize(iso.databaseUrl, 2);
  store = createStore({ sequelize });
});

afterAll(async () => {
  await sequelize?.close();
  await broker?.deleteQueues();
  await broker?.close();
});

function writerWith(insertBatch: Store['insertBatch'], log = silentLog()): Writer {
  return createWriter({ amqpUrl: iso.amqpUrl, topology: broker.topology, prefetch: 100, maxBatchRows: 5000, maxBatchDelayMs: 10, store: { insertBatch, applyMarks: async () => undefined }, log });
}

/** What a broken pg connection throws: no SQLSTATE. */
function connectionLost(): Error {
  return Object.assign(new Error('Connection terminated unexpectedly'), { name: 'SequelizeDatabaseError' });
}

describe('Postgres unavailable', () => {
  it('answers the read API and /health with a quick 503 and keeps running', async () => {
    const { service, baseUrl } = await startService({ databaseUrl: DEAD_POSTGRES, amqpUrl: iso.amqpUrl, queuePrefix: iso.queuePrefix });
    try {
      await service.writer.ready();
      const started = Date.now();
      const cursor = await getJson(baseUrl, '/internal/cursor');
      expect(cursor.status).toBe(503);
      expect(cursor.body.error).toMatch(/storage unavailable/);
      const sync = await getJson(baseUrl, '/internal/sync?user=a');
      expect(sync.status).toBe(503);
      const health = await getJson(baseUrl, '/health', null);
      expect(health).toEqual({
        status: 503,
        body: { status: 'down', service: 'SvPersist', dependencies: { postgres: 'down', rabbitmq: 'up' }, reason: expect.stringMatching(/^Postgres at 127\.0\.0\.1:1 does not answer \(.+\); check DATABASE_URL, or start Postgres$/) },
      });
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      await service.close();
    }
  });

  it('keeps a batch unacked while inserts fail, retries, and stores it once storage is back', async () => {
    const tag = uniqueTag();
    const [a, b] = [`a-${tag}`, `b-${tag}`];
    let failures = 0;
    let isDown = true;
    const { log, lines } = captureLog();
    const writer = writerWith(async (messages) => {
      if (isDown) {
        failures++;
        throw connectionLost();
      }
      return store.insertBatch(messages);
    }, log);
    try {
      await writer.ready();
      const messages = [makeMessage(a, b), makeMessage(b, a)];
      await broker.publish(messages);
      await eventually(() => expect(failures).toBeGreaterThanOrEqual(3));
      expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(0);
      expect(writer.stats().batches).toBe(0);
      isDown = false;
      await eventually(async () => expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(2));
      await eventually(() => expect(writer.stats().batches).toBe(1));
      expect(writer.stats().retries).toBe(failures);
      expect(lines.filter((l) => l.level === 'warn')).toHaveLength(1);
      expect(lines.find((l) => l.level === 'warn')?.msg).toMatch(/storage unavailable/);
    } finally {
      await writer.close();
    }
    expect(await broker.readyCount()).toBe(0);
  });

  it('stores nothing twice when a writer dies after its commit and before its ack', async () => {
    const tag = uniqueTag();
    const [a, b] = [`a-${tag}`, `b-${tag}`];
    let commits = 0;
    // Commits, then loses its connection before it can ack: the same as a kill between the two.
    const dying = writerWith(async (messages) => {
      await store.insertBatch(messages);
      commits++;
      throw connectionLost();
    });
    const messages: Envelope[] = Array.from({ length: 50 }, (_, i) => makeMessage(i % 2 ? a : b, i % 2 ? b : a));
    try {
      await dying.ready();
      await broker.publish(messages.slice(0, 25));
      await broker.publish(messages.slice(25));
      await eventually(() => expect(commits).toBeGreaterThan(1));
    } finally {
      await dying.close();
    }
    expect(dying.stats().batches).toBe(0);
    const committed = (await rowsOf(iso.databaseUrl, [a, b])).length;
    expect(committed).toBeGreaterThan(0);

    const next = writerWith((m) => store.insertBatch(m));
    try {
      await eventually(() => expect(next.stats().messages).toBe(50));
      expect(next.stats().rowsInserted).toBe(50 - committed);
      const rows = await rowsOf(iso.databaseUrl, [a, b]);
      expect(rows.map((r) => r.id).sort()).toEqual(messages.map((m) => m.msgId).sort());
      expect(await broker.readyCount()).toBe(0);
    } finally {
      await next.close();
    }
  });
});

describe('RabbitMQ unavailable', () => {
  it('starts anyway, reports rabbitmq down, logs one line naming the host, and closes cleanly', async () => {
    const { log, lines } = captureLog();
    const { service, baseUrl } = await startService({ databaseUrl: iso.databaseUrl, amqpUrl: DEAD_RABBITMQ, queuePrefix: iso.queuePrefix, log });
    try {
      await eventually(() => expect(lines.some((l) => String(l.msg).includes('cannot reach RabbitMQ at 127.0.0.1:1'))).toBe(true));
      const health = await getJson(baseUrl, '/health', null);
      expect(health).toEqual({ status: 503, body: { status: 'down', service: 'SvPersist', dependencies: { postgres: 'up', rabbitmq: 'down' } } });
      expect((await getJson(baseUrl, '/internal/cursor')).status).toBe(200);
      expect(service.writer.isConnected()).toBe(false);
    } finally {
      await service.close();
    }
    expect(lines.filter((l) => String(l.msg).includes('cannot reach RabbitMQ'))).toHaveLength(1);
    await expect(service.writer.ready()).rejects.toThrow(/closed/);
  });

  it('close() is idempotent', async () => {
    const { service } = await startService({ databaseUrl: iso.databaseUrl, amqpUrl: iso.amqpUrl, queuePrefix: iso.queuePrefix });
    await service.writer.ready();
    const first = service.close();
    const second = service.close();
    expect(second).toBe(first);
    await first;
    await service.close();
  });
});
