/**
 * Partitions spread over SvPersist instances (partition-balance.ts), on the
 * real broker and Postgres: two instances of four partitions' writers, the
 * first started alone so that it is active on all four; once the second is
 * there, the first steps back from two and the second stores them, and every
 * message is stored exactly once throughout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sequelize } from 'sequelize';
import { createMetrics, partitionOf, type Envelope } from '@simplechat/shared';
import { eventually, isolation } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStore, type Store } from '../src/store';
import { createPartitionWriters, type PartitionWriters } from '../src/writers';
import { createPartitionBalance, type PartitionBalance } from '../src/partition-balance';
import { createTestBroker, makeMessage, rowsOf, silentLog, users } from './support';

const iso = isolation();
const PARTITIONS = 4;
let sequelize: Sequelize;
let store: Store;

beforeAll(() => {
  sequelize = createSequelize(iso.databaseUrl, 4);
  store = createStore({ sequelize });
});

afterAll(async () => {
  await sequelize?.close();
});

/** One message into every partition, for a new pair of users each. */
function onePerPartition(): Envelope[] {
  const out = new Map<number, Envelope>();
  for (let tries = 0; out.size < PARTITIONS; tries++) {
    if (tries > 1000) throw new Error('conversations do not spread over the partitions');
    const [a] = users(1) as [string];
    const [b] = users(1) as [string];
    const m = makeMessage(a, b);
    const p = partitionOf(m.conversation, PARTITIONS);
    if (!out.has(p)) out.set(p, m);
  }
  return [...out.values()];
}

describe('partitions spread over SvPersist instances', () => {
  it('an instance active on every partition steps back from the surplus once a second one consumes, and nothing is stored twice', async () => {
    const prefix = `${iso.queuePrefix}balance.`;
    const broker = await createTestBroker(iso.amqpUrl, prefix, { partitions: PARTITIONS });
    const started: { writers: PartitionWriters; balance: PartitionBalance; metrics: ReturnType<typeof createMetrics> }[] = [];
    const startInstance = async () => {
      const writers = createPartitionWriters({ amqpUrl: iso.amqpUrl, topology: broker.topology, prefetch: 100, maxBatchRows: 5000, maxBatchDelayMs: 5, store, log: silentLog() });
      await writers.ready();
      const metrics = createMetrics({ service: 'persist' });
      const balance = createPartitionBalance({ amqpUrl: iso.amqpUrl, membersQueue: broker.topology.membersQueue, queueType: broker.topology.queueType, partitions: writers.partitions, log: silentLog(), metrics, intervalMs: 200 });
      started.push({ writers, balance, metrics });
      return { writers, metrics };
    };
    const sent: Envelope[] = [];
    let sending = true;
    const load = (async () => {
      while (sending) {
        const batch = onePerPartition();
        for (const m of batch) await broker.publish([m]);
        sent.push(...batch);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const activeOf = (w: PartitionWriters) => w.partitions.flatMap((p, i) => (p.deliveredSince(Date.now() - 1000) ? [i] : []));
    try {
      const first = await startInstance();
      await eventually(() => expect(activeOf(first.writers)).toEqual([0, 1, 2, 3]));
      const second = await startInstance();
      await eventually(
        () => {
          expect(activeOf(first.writers)).toHaveLength(2);
          expect(activeOf(second.writers)).toHaveLength(2);
        },
        { timeoutMs: 20_000 },
      );
      expect([...activeOf(first.writers), ...activeOf(second.writers)].sort()).toEqual([0, 1, 2, 3]);
      const scraped = await first.metrics.render();
      expect(scraped).toMatch(/simplechat_partition_step_backs_total\{[^}]*\} 2/);
      expect(scraped).toMatch(/simplechat_partition_active\{[^}]*partition="3"[^}]*\} 0/);
    } finally {
      sending = false;
      await load;
    }
    const people = sent.flatMap((m) => (m.conversation.kind === 'direct' ? [m.conversation.a] : []));
    const rows = await eventually(
      async () => {
        const r = await rowsOf(iso.databaseUrl, people);
        expect(r).toHaveLength(sent.length);
        return r;
      },
      { timeoutMs: 20_000 },
    );
    expect(new Set(rows.map((r) => r.id))).toEqual(new Set(sent.map((m) => m.msgId)));
    for (const s of started.reverse()) {
      await s.balance.close();
      await s.writers.close();
    }
    await broker.deleteQueues();
    await broker.close();
  }, 60_000);
});
