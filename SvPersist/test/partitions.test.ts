/** The partitioned write path on the real broker and Postgres: a writer per partition, the classic queue of before partitions drained, the queues' shape enforced. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import amqp, { type Channel, type ChannelModel } from 'amqplib';
import type { Sequelize } from 'sequelize';
import { assertTopology, deleteTopology, encodePayload, LEGACY_ROUTING_KEY, partitionOf, topology, TopologyMismatchError, type Envelope } from '@simplechat/shared';
import { eventually, isolation } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStore, type Store } from '../src/store';
import { createPartitionWriters, storedUntil } from '../src/writers';
import { captureLog, createTestBroker, makeMessage, rowsOf, silentLog, startService, users } from './support';

const iso = isolation();
let connection: ChannelModel;
let sequelize: Sequelize;
let store: Store;

/** A channel that may be closed by a refused declaration: a fresh one each time. */
async function channel(): Promise<Channel> {
  const ch = await connection.createChannel();
  ch.on('error', () => undefined);
  return ch;
}

beforeAll(async () => {
  connection = await amqp.connect(iso.amqpUrl);
  connection.on('error', () => undefined);
  sequelize = createSequelize(iso.databaseUrl, 2);
  store = createStore({ sequelize });
});

afterAll(async () => {
  await sequelize?.close();
  await connection?.close();
});

/** Conversations until both partitions of two have at least `each`. */
function spread(each: number): Envelope[] {
  const out: Envelope[] = [];
  const count = [0, 0];
  for (let tries = 0; (count[0] as number) < each || (count[1] as number) < each; tries++) {
    if (tries > 1000) throw new Error('conversations do not spread over two partitions');
    // Two separate tags: users of one tag give keys whose partition of two never varies (the hash's low bit).
    const [a] = users(1) as [string];
    const [b] = users(1) as [string];
    const m = makeMessage(a, b);
    const p = partitionOf(m.conversation, 2);
    if ((count[p] as number) >= each) continue;
    count[p] = (count[p] as number) + 1;
    out.push(m);
  }
  return out;
}

describe('a writer per partition', () => {
  it('each conversation is consumed from its partition queue and stored under that partition', async () => {
    const prefix = `${iso.queuePrefix}parts.`;
    const broker = await createTestBroker(iso.amqpUrl, prefix, { partitions: 2 });
    const calls: { partition: number | undefined; msgIds: string[] }[] = [];
    const writers = createPartitionWriters({
      amqpUrl: iso.amqpUrl,
      topology: broker.topology,
      prefetch: 100,
      maxBatchRows: 5000,
      maxBatchDelayMs: 5,
      store: {
        insertBatch: (messages, partition) => {
          calls.push({ partition, msgIds: messages.map((m) => m.msgId) });
          return store.insertBatch(messages, partition);
        },
        applyMarks: (r) => store.applyMarks(r),
      },
      log: silentLog(),
    });
    try {
      await writers.ready();
      expect(writers.partitions).toHaveLength(2);
      const sent = spread(5);
      for (const m of sent) await broker.publish([m]);
      const people = sent.flatMap((m) => [m.from, m.conversation.kind === 'direct' ? m.conversation.a : '', m.conversation.kind === 'direct' ? m.conversation.b : '']).filter(Boolean);
      await eventually(async () => expect(await rowsOf(iso.databaseUrl, people)).toHaveLength(10));
      for (const m of sent) {
        const call = calls.find((c) => c.msgIds.includes(m.msgId));
        expect(call?.partition).toBe(partitionOf(m.conversation, 2));
      }
      expect(writers.stats().messages).toBe(10);
      expect(writers.partitions.every((w) => w.stats().messages === 5)).toBe(true);
      await eventually(() => expect(writers.progress().idle).toBe(true));
    } finally {
      await writers.close();
      await broker.deleteQueues();
      await broker.close();
    }
  });

  it('storage is caught up as far as its slowest partition; an idle partition with an empty queue counts as now', () => {
    const now = 10_000;
    const idle = (storedThrough: number, ready: number | undefined) => ({ progress: { idle: true, storedThrough }, ready });
    const busy = (storedThrough: number) => ({ progress: { idle: false, storedThrough }, ready: 3 });
    expect(storedUntil([idle(0, 0), idle(5, 0)], now)).toBe(now);
    expect(storedUntil([idle(0, 0), busy(7000)], now)).toBe(7000);
    expect(storedUntil([busy(8000), busy(7000)], now)).toBe(7000);
    // messages ready in a queue although its writer here is idle: as far as that writer stored
    expect(storedUntil([idle(6000, 2), idle(0, 0)], now)).toBe(6000);
    // the broker could not be asked: no claim beyond what was stored
    expect(storedUntil([idle(6000, undefined)], now)).toBe(6000);
  });
});

describe('the classic queue of before partitions', () => {
  it('SvPersist drains it at start into storage, each message under its partition, and says so in one line', async () => {
    const prefix = `${iso.queuePrefix}legacy.`;
    const t = topology(prefix, { partitions: 2 });
    const ch = await channel();
    // The deployment as it was: one classic queue bound with the old routing key, messages waiting.
    await ch.assertExchange(t.exchange, 'direct', { durable: true });
    await ch.assertQueue(t.legacyQueue, { durable: true });
    await ch.bindQueue(t.legacyQueue, t.exchange, LEGACY_ROUTING_KEY);
    const sent = spread(20);
    for (let i = 0; i < sent.length; i += 4) ch.publish(t.exchange, LEGACY_ROUTING_KEY, encodePayload(sent.slice(i, i + 4)), { persistent: true });
    await eventually(async () => expect((await ch.checkQueue(t.legacyQueue)).messageCount).toBe(10));

    const { log, lines } = captureLog();
    const { service } = await startService({ databaseUrl: iso.databaseUrl, amqpUrl: iso.amqpUrl, queuePrefix: prefix, queuePartitions: 2, log });
    try {
      const people = sent.flatMap((m) => (m.conversation.kind === 'direct' ? [m.conversation.a, m.conversation.b] : []));
      await eventually(async () => expect(await rowsOf(iso.databaseUrl, people)).toHaveLength(40), { timeoutMs: 20_000 });
      await eventually(() => expect(lines.some((l) => String(l.msg).startsWith('the classic queue of before partitions is drained'))).toBe(true), { timeoutMs: 20_000 });
      const started = lines.filter((l) => String(l.msg).startsWith('draining the classic queue'));
      expect(started).toHaveLength(1);
      expect(started[0]).toMatchObject({ level: 'warn', messages: 10, queue: t.legacyQueue });
      expect((await ch.checkQueue(t.legacyQueue)).messageCount).toBe(0);
      // what the partition writers consume is untouched by the drain
      expect(service.writer.stats().messages).toBe(0);
    } finally {
      await service.close();
      const cleanup = await channel();
      await deleteTopology(cleanup, t);
      await cleanup.close();
    }
  });
});

describe('the queues\' shape is the same on every process', () => {
  it('another QUEUE_PARTITIONS fails the declaration with one line naming both counts', async () => {
    const prefix = `${iso.queuePrefix}count.`;
    await assertTopology(await channel(), topology(prefix, { partitions: 2 }));
    try {
      await expect(assertTopology(await channel(), topology(prefix, { partitions: 4 }))).rejects.toThrow(
        new TopologyMismatchError("QUEUE_PARTITIONS=4 but the broker's queues were declared with 2: set the same QUEUE_PARTITIONS on every gateway and SvPersist (docs/OPERATIONS.md#changing-queue_partitions)"),
      );
      // fewer partitions than declared fails too: partition 0 carries the count
      await expect(assertTopology(await channel(), topology(prefix, { partitions: 1 }))).rejects.toThrow(/^QUEUE_PARTITIONS=1 but the broker's queues were declared with 2/);
    } finally {
      const ch = await channel();
      await deleteTopology(ch, topology(prefix, { partitions: 4 }));
      await ch.close();
    }
  });

  it('another QUEUE_TYPE fails the declaration with one line naming the queue and the setting', async () => {
    const prefix = `${iso.queuePrefix}type.`;
    await assertTopology(await channel(), topology(prefix, { queueType: 'classic' }));
    try {
      const err = await assertTopology(await channel(), topology(prefix, { queueType: 'quorum' })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TopologyMismatchError);
      expect((err as Error).message).toMatch(new RegExp(`^queue ${prefix.replace(/\./g, '\\.')}messages\\.dlq is classic on the broker but QUEUE_TYPE=quorum: set QUEUE_TYPE=classic`));
      expect((err as Error).message).not.toContain('\n');
    } finally {
      const ch = await channel();
      await deleteTopology(ch, topology(prefix));
      await ch.close();
    }
  });

  it('a SvPersist whose settings differ from the broker\'s queues stops consuming and reports it once', async () => {
    const prefix = `${iso.queuePrefix}svc.`;
    await assertTopology(await channel(), topology(prefix, { partitions: 2 }));
    const fatal: Error[] = [];
    const { log } = captureLog();
    const { createPersistService } = await import('../src/app');
    const service = createPersistService({
      config: { databaseUrl: iso.databaseUrl, amqpUrl: iso.amqpUrl, queuePrefix: prefix, queuePartitions: 3, prefetch: 10, maxBatchRows: 10, maxBatchDelayMs: 5, dbPoolMax: 2, maxRoomMembers: 10, maxRoomsPerUser: 10, emptyAfterMs: 60_000, internalToken: 'x', internalTokenPrevious: undefined, notifyWebhookUrl: '', notifyWebhookSecret: undefined, notifyAfterMs: 10_000, notifyIncludeBody: true },
      log,
      onFatal: (err) => fatal.push(err),
    });
    try {
      await eventually(() => expect(fatal).toHaveLength(1));
      expect(fatal[0]?.message).toBe("QUEUE_PARTITIONS=3 but the broker's queues were declared with 2: set the same QUEUE_PARTITIONS on every gateway and SvPersist (docs/OPERATIONS.md#changing-queue_partitions)");
      await expect(service.writer.ready()).rejects.toThrow(/QUEUE_PARTITIONS=3/);
    } finally {
      await service.close();
      const ch = await channel();
      await deleteTopology(ch, topology(prefix, { partitions: 3 }));
      await ch.close();
    }
  });
});
