/**
 * What an operator sees when the database is not one SvPersist can use: no
 * schema, one migration behind, no such database, no Postgres at all. Each
 * test gets its own database (created and dropped here) and its own queues.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { isolation, eventually } from '../../test/helpers';
import { createDatabase, dropDatabase, migrate } from '../../scripts/lib/db';
import { captureLog, createTestBroker, getJson, makeMessage, rowsOf, startService, uniqueTag, type TestBroker } from './support';
import type { PersistService } from '../src/app';
import { MIGRATIONS } from '../src/migrations';

const iso = isolation();
/** trust auth ignores it; it must never show in a log line or an answer */
const PASSWORD = 'pw-never-logged-7f3a';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

/** A database URL of this test (not created) with a password in it, and where it is, as log lines name it. */
function newDatabase(host = new URL(iso.databaseUrl).host): { url: string; name: string; target: string } {
  const url = new URL(iso.databaseUrl);
  url.host = host;
  url.password = PASSWORD;
  const name = `sc_ready_${uniqueTag()}`;
  url.pathname = `/${name}`;
  return { url: url.toString(), name, target: `${url.host}/${name}` };
}

async function createdDatabase(): Promise<{ url: string; name: string; target: string }> {
  const db = newDatabase();
  await createDatabase(db.url);
  cleanups.push(() => dropDatabase(db.url));
  return db;
}

async function broker(): Promise<TestBroker> {
  const b = await createTestBroker(iso.amqpUrl, `${iso.queuePrefix}${uniqueTag()}.`);
  cleanups.push(async () => {
    await b.deleteQueues();
    await b.close();
  });
  return b;
}

async function start(databaseUrl: string, b: TestBroker): Promise<{ service: PersistService; baseUrl: string; lines: Record<string, unknown>[] }> {
  const { log, lines } = captureLog();
  const prefix = b.topology.exchange.replace(/messages$/, '');
  const started = await startService({ databaseUrl, amqpUrl: iso.amqpUrl, queuePrefix: prefix, log });
  cleanups.push(() => started.service.close());
  return { ...started, lines };
}

const warnings = (lines: Record<string, unknown>[], text: string) => lines.filter((l) => l.level === 'warn' && String(l.msg).includes(text));

/** No stack, no error level, no password: what the rule for operator-facing errors asks. */
function expectOneLiners(lines: Record<string, unknown>[]): void {
  const text = lines.map((l) => JSON.stringify(l)).join('\n');
  expect(text).not.toContain('"stack"');
  expect(text).not.toContain(PASSWORD);
  expect(lines.filter((l) => l.level === 'error')).toEqual([]);
}

describe('a database without the SimpleChat schema', () => {
  it('says so at startup in one line with `npm run db:migrate`, answers not ready everywhere, then stores what was queued once migrated', async () => {
    const db = await createdDatabase();
    const b = await broker();
    const { service, baseUrl, lines } = await start(db.url, b);
    const reason = `Postgres database ${db.target} has no SimpleChat schema (no table messages); run \`npm run db:migrate\``;

    await eventually(() => expect(warnings(lines, 'has no SimpleChat schema')).toHaveLength(1));
    expect(warnings(lines, 'has no SimpleChat schema')[0]).toMatchObject({ component: 'storage', problem: 'no_schema', msg: reason });

    expect(await getJson(baseUrl, '/health/ready', null)).toEqual({ status: 503, body: { status: 'not ready', service: 'SvPersist', reason, checks: { postgres: false } } });
    expect(await getJson(baseUrl, '/health', null)).toEqual({ status: 503, body: { status: 'down', service: 'SvPersist', dependencies: { postgres: 'down', rabbitmq: 'up' }, reason } });

    // A gateway asks every few seconds: each read is a 503 that says why, and none of them is logged.
    for (const path of ['/internal/cursor', '/internal/sync?user=a', '/internal/history?user=a&with=b', '/internal/messages/by-client?sender=a&clientId=c']) {
      const read = await getJson(baseUrl, path);
      expect(read.status).toBe(503);
      expect(read.body.error).toMatch(/^storage not ready: Postgres database .* is not migrated .*; run `npm run db:migrate`$/);
    }

    // A message sent meanwhile waits in the queue, unacked.
    const tag = uniqueTag();
    const message = makeMessage(`a-${tag}`, `b-${tag}`);
    await service.writer.ready();
    await b.publish([message]);
    await eventually(() => expect(service.writer.stats().retries).toBeGreaterThan(0));
    expect(service.writer.stats().batches).toBe(0);
    expect(warnings(lines, 'keeping the batch unacked')).toHaveLength(1);
    expect(warnings(lines, 'keeping the batch unacked')[0]?.msg).toMatch(/^storage not ready: Postgres database .* run `npm run db:migrate`; keeping the batch unacked and retrying$/);

    await migrate(db.url);

    await eventually(async () => expect((await getJson(baseUrl, '/health/ready', null)).status).toBe(200));
    await eventually(async () => expect((await rowsOf(db.url, [message.from])).map((r) => r.id)).toEqual([message.msgId]), { timeoutMs: 15_000 });
    expect((await getJson(baseUrl, '/health', null)).body).toEqual({ status: 'ok', service: 'SvPersist', dependencies: { postgres: 'up', rabbitmq: 'up' } });
    expect((await getJson(baseUrl, '/internal/cursor')).status).toBe(200);
    await eventually(() => expect(lines.some((l) => l.level === 'info' && l.msg === `storage ready again: Postgres database ${db.target} answers and is migrated`)).toBe(true));

    // Probes and reads did not repeat the startup line.
    expect(warnings(lines, 'has no SimpleChat schema')).toHaveLength(1);
    expectOneLiners(lines);
    await service.close();
    expect(await b.readyCount()).toBe(0);
  });

  it('one migration behind is caught too', async () => {
    const db = await createdDatabase();
    // every migration but the newest
    await migrate(db.url, 'db:migrate', MIGRATIONS.at(-2));
    const b = await broker();
    const { baseUrl, lines } = await start(db.url, b);
    const reason = `Postgres database ${db.target} is behind the migrations (not applied: ${MIGRATIONS.at(-1)}); run \`npm run db:migrate\``;

    await eventually(() => expect(warnings(lines, 'behind the migrations').map((l) => l.msg)).toEqual([reason]));
    expect((await getJson(baseUrl, '/health/ready', null)).body).toMatchObject({ status: 'not ready', reason });
    expectOneLiners(lines);
  });
});

describe('a database that does not exist', () => {
  it('names host:port and the database, says to run `npm run db:create`, and turns ready once it is created and migrated', async () => {
    const db = newDatabase();
    cleanups.push(() => dropDatabase(db.url));
    const b = await broker();
    const { baseUrl, lines } = await start(db.url, b);
    const host = new URL(db.url).host;
    const reason = `Postgres at ${host} has no database "${db.name}"; create it with \`npm run db:create\` and \`npm run db:migrate\` (\`npm start\` does both), or fix DATABASE_URL`;

    await eventually(() => expect(warnings(lines, 'has no database').map((l) => l.msg)).toEqual([reason]));
    expect(await getJson(baseUrl, '/health/ready', null)).toEqual({ status: 503, body: { status: 'not ready', service: 'SvPersist', reason, checks: { postgres: false } } });
    expect((await getJson(baseUrl, '/health', null)).body).toMatchObject({ status: 'down', reason });
    expect((await getJson(baseUrl, '/internal/cursor')).body.error).toBe(`storage not ready: ${reason}`);

    await createDatabase(db.url);
    // Created, not migrated yet: the next problem is said at once.
    await eventually(() => expect(warnings(lines, 'has no SimpleChat schema')).toHaveLength(1));
    await migrate(db.url);
    await eventually(async () => expect((await getJson(baseUrl, '/health/ready', null)).status).toBe(200));
    await eventually(() => expect(lines.filter((l) => String(l.msg).startsWith('storage ready again'))).toHaveLength(1));
    expect(warnings(lines, 'has no database')).toHaveLength(1);
    expectOneLiners(lines);
  });
});

describe('Postgres not answering', () => {
  it('says where at startup and in the line of a batch kept unacked, and tells to check DATABASE_URL', async () => {
    // Nothing listens there: connections are refused at once.
    const db = newDatabase('127.0.0.1:1');
    const b = await broker();
    const { service, baseUrl, lines } = await start(db.url, b);
    // the socket's own words in parentheses: ECONNREFUSED, or a timeout on a loaded machine
    const reason = /^Postgres at 127\.0\.0\.1:1 does not answer \(.+\); check DATABASE_URL, or start Postgres$/;

    await eventually(() => expect(warnings(lines, 'does not answer')).toHaveLength(1));
    expect(warnings(lines, 'does not answer')[0]).toMatchObject({ component: 'storage', problem: 'unreachable', msg: expect.stringMatching(reason) });
    const ready = await getJson(baseUrl, '/health/ready', null);
    expect(ready).toEqual({ status: 503, body: { status: 'not ready', service: 'SvPersist', reason: expect.stringMatching(reason), checks: { postgres: false } } });

    await service.writer.ready();
    await b.publish([makeMessage('a', 'b')]);
    await eventually(() => expect(warnings(lines, 'keeping the batch unacked')).toHaveLength(1));
    expect(warnings(lines, 'keeping the batch unacked')[0]?.msg).toMatch(/^storage unavailable: Postgres at 127\.0\.0\.1:1 does not answer \(.+\); check DATABASE_URL, or start Postgres; keeping the batch unacked and retrying$/);
    expect(warnings(lines, 'does not answer (')).toHaveLength(2);
    expectOneLiners(lines);
  });
});
