import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { conversationKey, encodePayload, type Envelope } from '@simplechat/shared';
import { eventually, isolation } from '../../test/helpers';
import { canUseRabbitmqctl, createTestBroker, dropBrokerConnections, makeMessage, recipientOf, rowsOf, startService, users, type TestBroker } from './support';
import type { PersistService } from '../src/app';
import type { GetMessage } from 'amqplib';

const iso = isolation();
let broker: TestBroker;
let service: PersistService;

beforeAll(async () => {
  broker = await createTestBroker(iso.amqpUrl, iso.queuePrefix);
  ({ service } = await startService({ databaseUrl: iso.databaseUrl, amqpUrl: iso.amqpUrl, queuePrefix: iso.queuePrefix }));
  await service.writer.ready();
});

afterAll(async () => {
  await service?.close();
  await broker?.deleteQueues();
  await broker?.close();
});


describe('writer', () => {
  it('stores each published message exactly once with every column right, bodies verbatim', async () => {
    const [alice, bob] = users(2) as [string, string];
    const bodies = ['she said "hi" and it\'s fine', 'emoji 😀👍🏽 and 中文', '<script>alert("x")</script>&amp;', 'line one\nline two\r\n\ttabbed', 'back\\slash {a,b} NULL', 'NULL'];
    const sent = bodies.map((body, i) => makeMessage(i % 2 ? bob : alice, i % 2 ? alice : bob, { body, ts: 1732345678901 + i }));
    await broker.publish(sent.slice(0, 3));
    await broker.publish(sent.slice(3));

    const rows = await eventually(async () => {
      const r = await rowsOf(iso.databaseUrl, [alice, bob]);
      expect(r).toHaveLength(sent.length);
      return r;
    });
    const byId = new Map(rows.map((r) => [r.id, r]));
    for (const m of sent) {
      const row = byId.get(m.msgId);
      expect(row).toMatchObject({
        id: m.msgId,
        sender: m.from,
        recipient: recipientOf(m),
        room_id: null,
        conversation_id: conversationKey(m.conversation),
        client_id: m.clientId,
        body: m.body,
        created_ms: String(m.ts),
      });
      expect(row?.seq).toMatch(/^\d+$/);
      expect(row?.stored_at).toBeInstanceOf(Date);
    }
    expect(new Set(rows.map((r) => r.seq)).size).toBe(rows.length);
  });

  it('gathers many deliveries into fewer inserts', async () => {
    const [a, b] = users(2) as [string, string];
    const before = service.writer.stats();
    const messages = Array.from({ length: 3000 }, (_, i) => makeMessage(i % 2 ? a : b, i % 2 ? b : a));
    const publishes: Promise<void>[] = [];
    for (let i = 0; i < messages.length; i += 10) publishes.push(broker.publish(messages.slice(i, i + 10)));
    await Promise.all(publishes);

    await eventually(async () => expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(3000));
    const after = await eventually(() => {
      const s = service.writer.stats();
      expect(s.messages - before.messages).toBe(3000);
      return s;
    });
    expect(after.deliveries - before.deliveries).toBe(300);
    expect(after.inserts - before.inserts).toBeLessThan(300);
    expect(after.batches - before.batches).toBeLessThan(300);
    expect(after.rowsInserted - before.rowsInserted).toBe(3000);
    expect(await broker.readyCount()).toBe(0);
  });

  it('stores nothing twice when a batch comes again, by id or by (sender, clientId)', async () => {
    const [a, b] = users(2) as [string, string];
    const first = Array.from({ length: 20 }, () => makeMessage(a, b));
    await broker.publish(first);
    await eventually(async () => expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(20));
    const before = service.writer.stats();

    // The same batch again (a redelivery or a republished duplicate), then the
    // same idempotency keys under new ids, then a marker that proves the queue moved on.
    await broker.publish(first);
    const sameKeys = first.slice(0, 5).map((m) => ({ ...m, id: `${m.msgId}-again`, body: 'other body' }));
    await broker.publish(sameKeys);
    const marker = makeMessage(b, a);
    await broker.publish([marker]);

    const rows = await eventually(async () => {
      const r = await rowsOf(iso.databaseUrl, [a, b]);
      expect(r.map((x) => x.id)).toContain(marker.msgId);
      return r;
    });
    expect(rows).toHaveLength(21);
    expect(rows.filter((r) => r.id.endsWith('-again'))).toHaveLength(0);
    expect(rows.find((r) => r.id === first[0]?.msgId)?.body).toBe(first[0]?.body);
    await eventually(() => expect(service.writer.stats().messages - before.messages).toBe(26));
    expect(service.writer.stats().rowsInserted - before.rowsInserted).toBe(1);
  });

  it('stores one copy when the same message appears twice in one batch', async () => {
    const [a, b] = users(2) as [string, string];
    const m = makeMessage(a, b);
    await broker.publish([m, m, { ...m }]);
    await eventually(async () => expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(1));
  });

  it('dead-letters a bad payload, an invalid item and a row Postgres refuses, with a reason, and stores the rest', async () => {
    const [a, b] = users(2) as [string, string];
    await broker.takeDeadLetters();
    const before = service.writer.stats();

    await broker.publishRaw(Buffer.from('{"v":1,"messages":[ not json'));
    // (its own conversation: storage numbers it, and the test's positions for a:b are not storage's)
    const good1 = makeMessage(a, a, { body: 'good one' });
    const invalidItem = { id: 'x', from: 'not a user id!', to: b, body: 'hi', ts: Date.now(), clientId: 'c' };
    // A batch in the v1 form an older gateway queued (`id` for the msgId) still stores.
    const good1AsV1 = { id: good1.msgId, from: a, to: a, body: good1.body, ts: good1.ts, clientId: good1.clientId };
    await broker.publishRaw(Buffer.from(JSON.stringify({ v: 1, messages: [good1AsV1, invalidItem] })));
    const good2 = makeMessage(a, b, { body: 'good two' });
    const poison = makeMessage(a, b, { body: 'nul \u0000 inside' });
    const good3 = makeMessage(b, a, { body: 'good three' });
    await broker.publish([good2, poison, good3]);

    await eventually(async () => {
      const ids = (await rowsOf(iso.databaseUrl, [a, b])).map((r) => r.id);
      expect(ids.sort()).toEqual([good1.msgId, good2.msgId, good3.msgId].sort());
    });
    // takeDeadLetters consumes what it reads: collect across polls
    const letters: GetMessage[] = [];
    await eventually(async () => {
      letters.push(...(await broker.takeDeadLetters()));
      expect(letters).toHaveLength(3);
    });
    const reasons = letters.map((l) => String(l.properties.headers?.['x-reason']));
    expect(reasons.some((r) => r.includes('not valid JSON'))).toBe(true);
    expect(reasons.some((r) => r.includes('invalid message') && r.includes('from'))).toBe(true);
    expect(reasons.some((r) => r.includes('22021'))).toBe(true);
    for (const l of letters) expect(l.properties.deliveryMode).toBe(2);
    const poisonLetter = letters.find((l) => String(l.properties.headers?.['x-reason']).includes('22021'));
    expect(JSON.parse(poisonLetter?.content.toString() ?? '{}')).toEqual(JSON.parse(encodePayload([poison]).toString()));
    // counted once the broker confirmed the letter, which may come after it can be read
    await eventually(() => expect(service.writer.stats().deadLettered - before.deadLettered).toBe(3));

    // The queue keeps flowing.
    const after = makeMessage(b, a, { body: 'after the poison' });
    await broker.publish([after]);
    await eventually(async () => expect((await rowsOf(iso.databaseUrl, [a, b])).map((r) => r.id)).toContain(after.msgId));
    expect(await broker.readyCount()).toBe(0);
  });

  it('stores the messages of a batch whose rows Postgres refuses only in part, however they are spread', async () => {
    const [a, b] = users(2) as [string, string];
    const messages: Envelope[] = Array.from({ length: 40 }, (_, i) => makeMessage(a, b, { body: [3, 17, 18, 39].includes(i) ? `bad\u0000${i}` : `ok ${i}` }));
    await broker.takeDeadLetters();
    await broker.publishRaw(encodePayload(messages));
    await eventually(async () => expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(36));
    const letters: GetMessage[] = [];
    await eventually(async () => {
      letters.push(...(await broker.takeDeadLetters()));
      expect(letters).toHaveLength(4);
    });
    const ids = letters.map((l) => (JSON.parse(l.content.toString()) as { messages: { msgId?: string }[] }).messages[0]?.msgId).sort();
    expect(ids).toEqual([3, 17, 18, 39].map((i) => messages[i]?.msgId).sort());
  });

  it('keeps consuming after its queue disappears and comes back', async () => {
    const [a, b] = users(2) as [string, string];
    const before = service.writer.stats();
    await broker.deleteQueues();
    // The broker cancels the consumer; the writer starts over and re-asserts the topology.
    const fresh = await createTestBroker(iso.amqpUrl, iso.queuePrefix);
    try {
      const m = makeMessage(a, b);
      await fresh.publish([m]);
      await eventually(async () => expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(1));
      expect(service.writer.stats().deliveries).toBeGreaterThan(before.deliveries);
      expect(service.writer.isConnected()).toBe(true);
    } finally {
      await fresh.close();
    }
  });

  it.skipIf(!canUseRabbitmqctl())('reconnects by itself and keeps storing when the broker drops its connection', async () => {
    const [a, b] = users(2) as [string, string];
    const first = makeMessage(a, b);
    await broker.publish([first]);
    await eventually(async () => expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(1));

    expect(dropBrokerConnections(`SvPersist ${broker.topology.queues[0]}`)).toBe(1);
    // Published while the writer is away or just back: stored once it consumes again.
    const during = Array.from({ length: 50 }, () => makeMessage(b, a));
    await broker.publish(during);
    await eventually(async () => expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(51));
    await eventually(() => expect(service.writer.isConnected()).toBe(true));
    expect(await broker.readyCount()).toBe(0);
  });
});
