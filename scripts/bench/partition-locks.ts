/**
 * Lock waits of the write path: two writers (each its own connection, as two SvPersist
 * partition writers would be) storing batches at once, first both on one partition (one
 * lock, as every batch took before partitions), then on two. A third connection samples
 * pg_stat_activity meanwhile: the share of samples in which a writer waits on the advisory
 * lock, or on a light-weight lock (the shared sequence's page among them).
 *
 *   npx ts-node --transpile-only scripts/bench/partition-locks.ts [-- --batches 300 --rows 500]
 */
import { randomBytes } from 'node:crypto';
import { QueryTypes } from 'sequelize';
import { createIdFactory, directConversation, type Envelope } from '@simplechat/shared';
import { createSequelize } from '../../SvPersist/src/app';
import { createStore } from '../../SvPersist/src/store';
import { createDatabase, dropDatabase, migrate } from '../lib/db';
import { sampleLockWaits } from './lock-waits';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const BATCHES = arg('batches', 300);
const ROWS = arg('rows', 500);

async function main(): Promise<void> {
  const base = new URL(process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres');
  base.pathname = `/sc_locks_${randomBytes(3).toString('hex')}`;
  const url = base.toString();
  await createDatabase(url);
  await migrate(url);
  const pools = [createSequelize(url, 1), createSequelize(url, 1)];
  const stores = pools.map((sequelize) => createStore({ sequelize }));
  const nextId = createIdFactory();
  // Positions as the gateways hand them out (a batch with none would reserve them first, outside the lock).
  const positions = new Map<string, number>();
  const batch = (w: number, b: number): Envelope[] =>
    Array.from({ length: ROWS }, (_, i) => {
      const msgId = nextId(Date.now());
      const from = `w${w}-s${i % 50}`;
      const conversation = directConversation(from, `w${w}-r${b % 20}`);
      const key = `${from}>${b % 20}`;
      const seq = (positions.get(key) ?? 0) + 1;
      positions.set(key, seq);
      return { msgId, clientId: `c-${msgId}`, from, conversation, seq, body: 'x'.repeat(40), ts: Date.now() };
    });
  try {
    for (const [label, partitionOf] of [
      ['one partition (one lock, as before partitions)', () => 0],
      ['two partitions (a lock each)', (w: number) => w],
    ] as const) {
      const sampler = await sampleLockWaits(url, { intervalMs: 0, application: 'SvPersist' });
      const t0 = process.hrtime.bigint();
      const perBatchMs: number[] = [];
      await Promise.all(
        stores.map(async (store, w) => {
          for (let b = 0; b < BATCHES; b++) {
            const rows = batch(w, b);
            const s = process.hrtime.bigint();
            await store.insertBatch(rows, partitionOf(w));
            perBatchMs.push(Number(process.hrtime.bigint() - s) / 1e6);
          }
        }),
      );
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const taken = await sampler.stop();
      // per writer sample: each backend running a statement in each sample
      const samples = { total: 0, advisory: 0, lwlock: 0, lwlockEvents: new Map<string, number>() };
      for (const t of taken) {
        samples.total += t.active;
        samples.advisory += t.advisory;
        samples.lwlock += t.lwlocks.length;
        for (const e of t.lwlocks) samples.lwlockEvents.set(e, (samples.lwlockEvents.get(e) ?? 0) + 1);
      }
      perBatchMs.sort((a, b) => a - b);
      const pct = (n: number) => ((100 * n) / Math.max(1, samples.total)).toFixed(1);
      console.log(
        `${label}: ${2 * BATCHES} batches of ${ROWS} rows in ${seconds.toFixed(2)} s (${Math.round((2 * BATCHES * ROWS) / seconds)} rows/s); ` +
          `batch p50 ${perBatchMs[Math.floor(perBatchMs.length / 2)]?.toFixed(1)} ms, p99 ${perBatchMs[Math.floor(perBatchMs.length * 0.99)]?.toFixed(1)} ms; ` +
          `writer samples ${samples.total}: waiting on the advisory lock ${pct(samples.advisory)}%, on a light-weight lock ${pct(samples.lwlock)}% ${JSON.stringify(Object.fromEntries(samples.lwlockEvents))}`,
      );
    }
    const [{ n } = { n: 0 }] = await pools[0]!.query<{ n: number }>('SELECT count(*)::int AS n FROM messages', { type: QueryTypes.SELECT });
    console.log(`rows stored: ${n}`);
  } finally {
    await Promise.all(pools.map((p) => p.close()));
    await dropDatabase(url);
  }
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
