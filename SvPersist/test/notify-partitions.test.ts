/**
 * The notifier over several partitions: writers of four partitions commit concurrently while
 * it scans; every missed message is in exactly one event (none skipped by the position moving
 * past a batch still in flight, none decided twice).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import amqp, { type Channel, type ChannelModel } from 'amqplib';
import type { Sequelize } from 'sequelize';
import { createIdFactory, directConversation, type Envelope, type MissedMessagesEvent } from '@simplechat/shared';
import { databasePerFile, eventually, isolation } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStore } from '../src/store';
import { createMissedNotifier } from '../src/missed';
import { createNotifyMetrics } from '../src/metrics';
import { assertNotifyTopology, deleteNotifyTopology, notifyTopology } from '../src/notify-topology';
import { createMetrics } from '@simplechat/shared';
import { silentLog, uniqueTag } from './support';
import { holdBatch } from './held-batch';

const databaseUrl = databasePerFile('notify_partitions');
const iso = isolation();
const topology = notifyTopology(iso.queuePrefix, { delaysMs: [250], giveUpAfterMs: 1000 });
const PARTITIONS = 4;
const BATCHES = 25;
const BATCH_SIZE = 8;

let pools: Sequelize[] = [];
let connection: ChannelModel;
let channel: Channel;

beforeAll(async () => {
  pools = Array.from({ length: PARTITIONS + 1 }, () => createSequelize(databaseUrl, 2));
  connection = await amqp.connect(iso.amqpUrl);
  channel = await connection.createChannel();
  await assertNotifyTopology(channel, topology);
});

afterAll(async () => {
  await deleteNotifyTopology(channel, topology).catch(() => undefined);
  await connection?.close().catch(() => undefined);
  await Promise.all(pools.map((p) => p.close()));
});

function startNotifier() {
  return createMissedNotifier({
    sequelize: pools[PARTITIONS] as Sequelize,
    amqpUrl: iso.amqpUrl,
    topology,
    afterMs: 20,
    includeBody: false,
    log: silentLog(),
    metrics: createNotifyMetrics(createMetrics({ service: 'SvPersist' }), { outboxDepth: async () => 0 }),
    receiptsStoredUntil: async () => Date.now(),
    intervalMs: 30,
  });
}

const events: MissedMessagesEvent[] = [];
beforeAll(async () => {
  await channel.consume(topology.queue, (m) => {
    if (!m) return;
    events.push(JSON.parse(m.content.toString()) as MissedMessagesEvent);
    channel.ack(m);
  });
});
const notifiedOf = (ids: readonly string[]) => events.flatMap((e) => e.messages.map((m) => m.msgId)).filter((id) => ids.includes(id));

const nextId = createIdFactory();
const positions = new Map<string, number>();
function message(from: string, to: string): Envelope {
  const key = `${from}:${to}`;
  const seq = (positions.get(key) ?? 0) + 1;
  positions.set(key, seq);
  const msgId = nextId(Date.now());
  return { msgId, clientId: `c-${msgId}`, from, conversation: directConversation(from, to), seq, body: 'x', ts: Date.now() };
}

describe('missed-message notifications over several partitions', () => {
  it('each missed message of concurrently committing partitions is in exactly one event', async () => {
    const tag = uniqueTag();
    const notifier = startNotifier();
    try {
      const sent: string[] = [];
      await Promise.all(
        pools.slice(0, PARTITIONS).map(async (sequelize, p) => {
          const store = createStore({ sequelize });
          for (let b = 0; b < BATCHES; b++) {
            const batch = Array.from({ length: BATCH_SIZE }, (_, i) => message(`s${p}-${tag}`, `r${i % 3}-${tag}`));
            sent.push(...batch.map((m) => m.msgId));
            await store.insertBatch(batch, p);
          }
        }),
      );
      await eventually(() => expect(notifiedOf(sent).length).toBeGreaterThanOrEqual(sent.length), { timeoutMs: 20_000, intervalMs: 100 });
      const notified = notifiedOf(sent);
      expect(notified.length).toBe(new Set(notified).size);
      expect([...notified].sort()).toEqual([...sent].sort());
    } finally {
      await notifier.close();
    }
  });

  it('a batch in flight while later ones of other partitions become due is notified once it commits', async () => {
    const tag = uniqueTag();
    const store = createStore({ sequelize: pools[0] as Sequelize });
    const first = [0, 1, 2].map((p) => ({ m: message(`s${p}-${tag}`, `r-${tag}`), p }));
    for (const { m, p } of first) await store.insertBatch([m], p);
    const h = message(`h-${tag}`, `r-${tag}`);
    const held = await holdBatch(databaseUrl, 2, h);
    const notifier = startNotifier();
    try {
      const later = [message(`s0-${tag}`, `r-${tag}`), message(`s1-${tag}`, `r-${tag}`)];
      await store.insertBatch([later[0] as Envelope], 0);
      await store.insertBatch([later[1] as Envelope], 1);
      const others = [...first.map((f) => f.m.msgId), ...later.map((m) => m.msgId)];
      // the later rows (seqs past the held one's) are decided while it is in flight
      await eventually(() => expect(notifiedOf(others).length).toBe(others.length), { timeoutMs: 20_000, intervalMs: 50 });
      const heldId = h.msgId;
      expect(notifiedOf([heldId])).toEqual([]);
      await held.commit();
      await eventually(() => expect(notifiedOf([heldId])).toEqual([heldId]), { timeoutMs: 20_000, intervalMs: 50 });
      expect(notifiedOf(others).length).toBe(others.length);
    } finally {
      await notifier.close();
    }
  });
});
