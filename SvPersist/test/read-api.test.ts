import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isolation } from '../../test/helpers';
import { createTestBroker, getJson, makeMessage, recipientOf, startService, uniqueTag, INTERNAL_TOKEN } from './support';
import type { PersistService } from '../src/app';
import type { Envelope } from '@simplechat/shared';
import { componentOf, notBefore, parsePosition } from '../src/sync-cursor';
import { isCursor } from '@simplechat/shared';

const iso = isolation();
const PREVIOUS_TOKEN = 'test-previous-internal-token';
let service: PersistService;
let baseUrl: string;

beforeAll(async () => {
  ({ service, baseUrl } = await startService({ databaseUrl: iso.databaseUrl, amqpUrl: iso.amqpUrl, queuePrefix: iso.queuePrefix, internalTokenPrevious: PREVIOUS_TOKEN }));
});

afterAll(async () => {
  await service?.close();
  const broker = await createTestBroker(iso.amqpUrl, iso.queuePrefix);
  await broker.deleteQueues();
  await broker.close();
});

/** Stores messages one batch at a time, so seq follows the array order. */
async function store(...messages: Envelope[]): Promise<void> {
  for (const m of messages) await service.store.insertBatch([m]);
}

const q = (params: Record<string, string | number>) => new URLSearchParams(Object.entries(params).map(([k, v]): [string, string] => [k, String(v)])).toString();

describe('history', () => {
  it('pages one conversation newest first, each page oldest first, with more while older ones exist', async () => {
    const tag = uniqueTag();
    const [alice, bob, carol] = [`alice-${tag}`, `bob-${tag}`, `carol-${tag}`];
    const ts = Date.now();
    const convo = Array.from({ length: 7 }, (_, i) => makeMessage(i % 3 ? alice : bob, i % 3 ? bob : alice, { ts: ts + i, body: `m${i}` }));
    // Stored out of order: history follows positions (acceptance order), not storage order.
    await store(...[...convo].reverse());
    await store(makeMessage(alice, carol), makeMessage(carol, bob), makeMessage(alice, alice));

    const wire = (m: Envelope) => ({ msgId: m.msgId, from: m.from, to: recipientOf(m), body: m.body, ts: m.ts, seq: m.seq });
    const p1 = await getJson(baseUrl, `/internal/history?${q({ user: alice, with: bob, limit: 3 })}`);
    expect(p1.status).toBe(200);
    expect(p1.body).toEqual({ messages: convo.slice(4).map(wire), more: true });

    const p2 = await getJson(baseUrl, `/internal/history?${q({ user: bob, with: alice, limit: 3, before: p1.body.messages[0].msgId })}`);
    expect(p2.body).toEqual({ messages: convo.slice(1, 4).map(wire), more: true });

    const p3 = await getJson(baseUrl, `/internal/history?${q({ user: alice, with: bob, limit: 3, before: p2.body.messages[0].msgId })}`);
    expect(p3.body).toEqual({ messages: convo.slice(0, 1).map(wire), more: false });

    const all = await getJson(baseUrl, `/internal/history?${q({ user: alice, with: bob })}`);
    expect(all.body).toEqual({ messages: convo.map(wire), more: false });
  });

  it('answers an empty page for a conversation without messages', async () => {
    const tag = uniqueTag();
    const r = await getJson(baseUrl, `/internal/history?${q({ user: `x-${tag}`, with: `y-${tag}` })}`);
    expect(r).toEqual({ status: 200, body: { messages: [], more: false } });
  });
});

describe('sync', () => {
  it('follows the cursor chain from the start to the end, in storage order, each message once', async () => {
    const tag = uniqueTag();
    const [me, bob, carol] = [`me-${tag}`, `bob-${tag}`, `carol-${tag}`];
    const mine = [makeMessage(bob, me), makeMessage(me, bob), makeMessage(carol, me), makeMessage(me, me), makeMessage(me, carol), makeMessage(bob, me), makeMessage(me, bob)];
    // Storage order differs from id order: sync follows storage order.
    const order = [3, 0, 6, 1, 5, 2, 4].map((i) => mine[i] as Envelope);
    for (const m of order) {
      await store(m);
      await store(makeMessage(bob, carol)); // not mine
    }

    const seen: string[] = [];
    let cursor: string | undefined;
    const pages: { count: number; more: boolean }[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await getJson(baseUrl, `/internal/sync?${q({ user: me, limit: 3, ...(cursor === undefined ? {} : { after: cursor }) })}`);
      expect(r.status).toBe(200);
      seen.push(...r.body.messages.map((m: { msgId: string }) => m.msgId));
      pages.push({ count: r.body.messages.length, more: r.body.more });
      if (cursor !== undefined && r.body.messages.length === 0) expect(r.body.cursor).toBe(cursor);
      if (cursor !== undefined) expect(notBefore(parsePosition(r.body.cursor), parsePosition(cursor))).toBe(true);
      cursor = r.body.cursor;
      if (!r.body.more) break;
    }
    expect(pages).toEqual([
      { count: 3, more: true },
      { count: 3, more: true },
      { count: 1, more: false },
    ]);
    expect(seen).toEqual(order.map((m) => m.msgId));

    const end = await getJson(baseUrl, `/internal/sync?${q({ user: me, after: cursor as string })}`);
    expect(end.body).toEqual({ messages: [], cursor, more: false });

    const later = makeMessage(carol, me);
    await store(later);
    const next = await getJson(baseUrl, `/internal/sync?${q({ user: me, after: cursor as string })}`);
    expect(next.body.messages.map((m: { msgId: string }) => m.msgId)).toEqual([later.msgId]);
  });

  it('answers cursor "0" and no messages to a user with none', async () => {
    const r = await getJson(baseUrl, `/internal/sync?${q({ user: `nobody-${uniqueTag()}` })}`);
    expect(r).toEqual({ status: 200, body: { messages: [], cursor: '0', more: false } });
  });
});

describe('cursor', () => {
  it('only moves forward, and a sync from it returns exactly what was stored afterwards', async () => {
    const tag = uniqueTag();
    const [a, b] = [`a-${tag}`, `b-${tag}`];
    const c1 = await getJson(baseUrl, '/internal/cursor');
    expect(c1.status).toBe(200);
    expect(isCursor(c1.body.cursor)).toBe(true);
    const m = makeMessage(a, b, { ts: 1732345678901 });
    await store(m);
    const c2 = await getJson(baseUrl, '/internal/cursor');
    // stored on partition 0: its component moved
    expect(componentOf(parsePosition(c2.body.cursor), 0) > componentOf(parsePosition(c1.body.cursor), 0)).toBe(true);
    expect(notBefore(parsePosition(c2.body.cursor), parsePosition(c1.body.cursor))).toBe(true);
    expect(typeof c2.body.newestTs).toBe('number');
    const c3 = await getJson(baseUrl, '/internal/cursor');
    expect(notBefore(parsePosition(c3.body.cursor), parsePosition(c2.body.cursor))).toBe(true);

    const s = await getJson(baseUrl, `/internal/sync?${q({ user: b, after: c1.body.cursor })}`);
    expect(s.body.messages.map((x: { msgId: string }) => x.msgId)).toEqual([m.msgId]);
    const none = await getJson(baseUrl, `/internal/sync?${q({ user: b, after: c2.body.cursor })}`);
    expect(none.body.messages).toEqual([]);
  });
});

describe('by-client', () => {
  it('finds the stored message of an idempotency key, and null for an unknown one', async () => {
    const tag = uniqueTag();
    const m = makeMessage(`s-${tag}`, `r-${tag}`, { clientId: 'c-42', body: 'hi "there"' });
    await store(m);
    const found = await getJson(baseUrl, `/internal/messages/by-client?${q({ sender: m.from, clientId: 'c-42' })}`);
    expect(found).toEqual({ status: 200, body: { message: { msgId: m.msgId, from: m.from, to: recipientOf(m), body: m.body, ts: m.ts, seq: m.seq } } });
    const other = await getJson(baseUrl, `/internal/messages/by-client?${q({ sender: recipientOf(m), clientId: 'c-42' })}`);
    expect(other).toEqual({ status: 200, body: { message: null } });
  });
});

describe('internal auth', () => {
  const paths = ['/internal/history?user=a&with=b', '/internal/sync?user=a', '/internal/cursor', '/internal/messages/by-client?sender=a&clientId=c', '/internal/nothing-here'];

  it('refuses every internal route without a token and with a wrong one', async () => {
    for (const path of paths) {
      const none = await getJson(baseUrl, path, null);
      expect(none.status, path).toBe(401);
      expect(none.body.error).toMatch(/unauthorized/);
      expect((await getJson(baseUrl, path, 'wrong-token')).status, path).toBe(401);
      const basic = await fetch(`${baseUrl}${path}`, { headers: { authorization: `Basic ${INTERNAL_TOKEN}` } });
      expect(basic.status, path).toBe(401);
    }
  });

  it('accepts the current and the previous token', async () => {
    expect((await getJson(baseUrl, '/internal/cursor', INTERNAL_TOKEN)).status).toBe(200);
    expect((await getJson(baseUrl, '/internal/cursor', PREVIOUS_TOKEN)).status).toBe(200);
    expect((await getJson(baseUrl, '/internal/nothing-here', INTERNAL_TOKEN)).status).toBe(404);
  });
});

describe('bad requests', () => {
  it.each([
    '/internal/history?user=a',
    '/internal/history?with=b',
    '/internal/history?user=a%20b&with=b',
    '/internal/history?user=a&with=b&limit=0',
    '/internal/history?user=a&with=b&limit=201',
    '/internal/history?user=a&with=b&limit=abc',
    '/internal/history?user=a&with=b&user=c',
    `/internal/history?user=a&with=b&before=${'x'.repeat(65)}`,
    '/internal/sync',
    '/internal/sync?user=a&after=abc',
    '/internal/sync?user=a&after=-1',
    '/internal/sync?user=a&after=99999999999999999999',
    '/internal/sync?user=a&after=9999999999999999999',
    '/internal/sync?user=a&limit=501',
    '/internal/messages/by-client?sender=a',
    `/internal/messages/by-client?sender=a&clientId=${'c'.repeat(65)}`,
  ])('answers 400 with a JSON error to %s', async (path) => {
    const r = await getJson(baseUrl, path);
    expect(r.status).toBe(400);
    expect(r.body.error).toMatch(/^bad request: /);
  });
});

describe('health', () => {
  it('answers 200 with both dependencies up', async () => {
    await service.writer.ready();
    const r = await getJson(baseUrl, '/health', null);
    expect(r).toEqual({ status: 200, body: { status: 'ok', service: 'SvPersist', dependencies: { postgres: 'up', rabbitmq: 'up' } } });
  });
});
