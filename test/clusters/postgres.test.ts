/**
 * Storage with a streaming replica (DATABASE_READ_URL): a private primary and replica
 * (pg-replica.ts, ports 5491-5492), SvPersist's history and sync served by the replica,
 * never skipping a message while it lags or after it is gone, and the fault suite's load
 * through a whole cluster (ports 5493-5496) while the replica is stopped.
 *
 *   npx vitest run test/clusters/postgres.test.ts
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sequelize } from 'sequelize';
import { request } from 'undici';
import { createIdFactory, directConversation, ProtocolSocket, type Envelope } from '@simplechat/shared';
import { createSequelize } from '../../SvPersist/src/app';
import { createStore, type Store } from '../../SvPersist/src/store';
import { createReadReplica, type FallbackReason } from '../../SvPersist/src/read-replica';
import { silentLog } from '../../SvPersist/test/support';
import { services } from '../services';
import { startPgReplica, type PgReplicaPair } from './pg-replica';
import { startCluster, metricValue, INTERNAL_TOKEN, TIMINGS, type Cluster } from '../faults/cluster';
import { createLoad, type Load } from '../faults/load';
import { converge, closeBooks } from '../faults/books';
import { expectBalanced } from './balanced';
import { cleanupSync, tempDir, waitUntil } from '../faults/procs';
import { removeIsolated } from '../cluster';

const ROOT = resolve(__dirname, '..', '..');
const PG_PORTS = [5491, 5492] as const;
const CLUSTER_PORTS: { discover: number; persist: number[]; ws: [number, number] } = { discover: 5493, persist: [5494], ws: [5495, 5496] };
const run = randomBytes(2).toString('hex');
/** partitions of the write path in the cluster under load */
const PARTITIONS = 4;

let pg: PgReplicaPair;

beforeAll(async () => {
  pg = await startPgReplica(PG_PORTS);
}, 120_000);

afterAll(async () => {
  await pg?.close();
  cleanupSync();
}, 60_000);

/** Counts what the replica served and what fell back, as SvPersist's metrics do. */
function counting() {
  const counts = { served: 0, behind: 0, unavailable: 0 };
  return { counts, metrics: { served: () => void counts.served++, fellBack: (r: FallbackReason) => void counts[r]++ } };
}

describe('history and sync from a streaming replica', () => {
  const database = `sc_replica_${run}`;
  let primary: Sequelize;
  let replica: Sequelize;
  let store: Store;
  const { counts, metrics } = counting();
  const nextId = createIdFactory();
  const positions = new Map<string, number>();

  beforeAll(async () => {
    await pg.createDatabase(database);
    primary = createSequelize(pg.primary.url(database), 4);
    replica = createSequelize(pg.replica.url(database), 4, { connectTimeoutMs: 1000, queryTimeoutMs: 3000 });
    store = createStore({ sequelize: primary, reads: createReadReplica({ primary, replica, log: silentLog(), metrics }) });
  }, 60_000);

  afterAll(async () => {
    await primary?.close();
    await replica?.close();
  });

  function message(from: string, to: string): Envelope {
    const key = [from, to].sort().join(':');
    const seq = (positions.get(key) ?? 0) + 1;
    positions.set(key, seq);
    const msgId = nextId(Date.now());
    return { msgId, clientId: `c-${msgId}`, from, conversation: directConversation(from, to), seq, body: `hi ${msgId}`, ts: Date.now() };
  }

  async function syncAll(user: string, after?: string): Promise<{ ids: string[]; cursor: string | undefined }> {
    const ids: string[] = [];
    let cursor = after;
    for (;;) {
      const page = await store.sync({ user, after: cursor, limit: 3 });
      ids.push(...page.messages.map((m) => m.msgId));
      cursor = page.cursor;
      if (!page.more) return { ids, cursor };
    }
  }

  it('serves history and sync from the replica, for rows of several partitions', async () => {
    const user = `u-${randomBytes(3).toString('hex')}`;
    const sent = [0, 1, 2, 3].flatMap((p) => {
      const batch = [message(`p${p}-${user}`, user), message(user, `p${p}-${user}`)];
      return batch.map((m) => ({ m, p }));
    });
    for (const p of [0, 1, 2, 3]) await store.insertBatch(sent.filter((s) => s.p === p).map((s) => s.m), p);
    const before = counts.served;
    const { ids } = await syncAll(user);
    expect([...ids].sort()).toEqual(sent.map((s) => s.m.msgId).sort());
    const history = await store.history({ user, with: `p2-${user}`, limit: 10 });
    expect(history.messages.map((m) => m.msgId)).toEqual(sent.filter((s) => s.p === 2).map((s) => s.m.msgId));
    expect(counts.served - before).toBeGreaterThanOrEqual(4);
  });

  it('a replica whose replay is paused never makes sync skip: the read waits for it, then goes to the primary', async () => {
    const user = `u-${randomBytes(3).toString('hex')}`;
    await store.insertBatch([message(`a-${user}`, user)], 1);
    const { cursor } = await syncAll(user);
    await pg.replica.query(database, 'SELECT pg_wal_replay_pause()');
    try {
      const later = [message(`b-${user}`, user), message(`c-${user}`, user)];
      await store.insertBatch([later[0] as Envelope], 2);
      await store.insertBatch([later[1] as Envelope], 0);
      expect(await pg.lagBytes(database)).toBeGreaterThan(0);
      const behind = counts.behind;
      const caught = await syncAll(user, cursor);
      expect([...caught.ids].sort()).toEqual(later.map((m) => m.msgId).sort());
      expect(counts.behind).toBeGreaterThan(behind);
      // the history of a lagging replica is not served either
      expect((await store.history({ user, with: `c-${user}`, limit: 5 })).messages.map((m) => m.msgId)).toEqual([later[1]?.msgId]);
    } finally {
      await pg.replica.query(database, 'SELECT pg_wal_replay_resume()');
    }
    await waitUntil('replica caught up', async () => (await pg.lagBytes(database)) <= 0, 10_000, 20);
    const served = counts.served;
    expect((await syncAll(user)).ids.length).toBe(3);
    expect(counts.served).toBeGreaterThan(served);
  });
});

describe('the replica stopped under load', () => {
  let cluster: Cluster | undefined;
  let load: Load | undefined;

  beforeAll(() => {
    // the cluster runs the compiled services
    execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-b'], { cwd: ROOT, stdio: 'inherit' });
  }, 120_000);

  afterAll(async () => {
    await load?.close().catch(() => undefined);
    await cluster?.stop();
    // the system Redis and RabbitMQ keep nothing of this run
    if (cluster) await removeIsolated({ ...services(), keyPrefix: cluster.keyPrefix, queuePrefix: cluster.queuePrefix }, undefined, PARTITIONS);
  }, 60_000);

  it('loses nothing, reads fall back to the primary, the books are exact', async () => {
    const tag = `pgr${run}`;
    const dir = tempDir('pg-cluster');
    const { redisUrl, amqpUrl } = services();
    cluster = await startCluster(
      {
        redis: { url: redisUrl },
        rabbit: { url: amqpUrl },
        dir,
        async createScenarioDb(name) {
          await pg.createDatabase(name);
          return pg.primary.url(name);
        },
      },
      // four partitions of the write path: storage stamps under four locks, cursors are positions over them
      { tag, ports: CLUSTER_PORTS, inspect: false, env: { QUEUE_PARTITIONS: String(PARTITIONS) }, persistEnv: { DATABASE_READ_URL: pg.replica.url(`sc_${tag}`) } },
    );
    const c = cluster;
    load = createLoad({ urls: c.wsUrls, users: 24, multi: 8, token: (u) => c.token(u), ratePerSec: 40, maxInFlightPerConn: 4, prefix: `${tag}-` });
    const l = load;
    await l.ready(15_000);
    const s = await ProtocolSocket.open(c.wsUrls[0] as string);
    try {
      await s.register(await c.token(l.users[0] as string));
      const info = await s.request({ type: 'room.create', name: `${tag} room`, members: l.users });
      l.setRoom(info.room as string, l.users);
    } finally {
      s.close();
    }
    const acked = (since: number) => [...l.records.values()].filter((r) => r.ackedAt !== undefined && r.ackedAt >= since).length;
    const metrics = async () => c.persist.metrics();
    l.start();
    // Warm-up: traffic acked, and the clients' syncs served by the replica.
    await waitUntil('warm-up traffic acked and synced from the replica', async () => acked(0) >= 80 && metricValue(await metrics(), 'replica_reads_total') > 0, 30_000, 50);
    const servedBefore = metricValue(await metrics(), 'replica_reads_total');
    const partitions = await c.query<{ partition: number }>('SELECT DISTINCT partition FROM messages ORDER BY partition');
    expect(partitions.map((r) => r.partition)).toEqual([0, 1, 2, 3]);

    const faultAt = Date.now();
    await pg.replica.stop('immediate');
    const stoppedAt = Date.now();
    // Reads keep being answered: a sync (and a history) through SvPersist's API right after the stop.
    const read = async (path: string) => (await request(`${c.persist.url}${path}`, { headers: { authorization: `Bearer ${INTERNAL_TOKEN}` }, signal: AbortSignal.timeout(5000) })).statusCode;
    let recoveryMs = 0;
    await waitUntil('sync answered after the replica stopped', async () => {
      const ok = (await read(`/internal/sync?user=${l.users[1]}&limit=5`)) === 200 && (await read(`/internal/history?user=${l.users[1]}&with=${l.users[2]}&limit=5`)) === 200;
      if (ok) recoveryMs = Date.now() - faultAt;
      return ok;
    }, 15_000, 10);
    console.log(`replica stopped (pg_ctl stop -m immediate, which took ${stoppedAt - faultAt} ms) -> history and sync answered again by the primary: ${recoveryMs} ms after the stop began`);

    const injectedAt = Date.now();
    await waitUntil('traffic after the fault acked', () => acked(injectedAt) >= 80, 60_000, 50);
    l.stop();
    const settled = await converge(c, l, [], 45_000);
    const books = await closeBooks(c, l, [], faultAt, TIMINGS.SYNC_INTERVAL_MS);
    const text = await metrics();
    const fellBack = metricValue(text, 'replica_fallback_reads_total', 'reason="unavailable"');
    console.log(`books: acked ${books.acked}, stored ${books.stored}, lost ${books.lost}, duplicated ${books.duplicated}, recovery ${books.recoveryMs} ms, settled in ${settled.ms} ms; replica reads ${servedBefore} before the stop, ${fellBack} fallen back after`);
    expect(settled.settled, books.details.join('\n')).toBe(true);
    expectBalanced(books, { late: true });
    expect(fellBack).toBeGreaterThan(0);
    // said once, not per request
    const warned = readFileSync(join(dir, `${tag}-persist.log`), 'utf8').split('\n').filter((line) => line.includes('the read replica at')).length;
    expect(warned).toBe(1);

    // The replica back: reads go to it again (tried every 2 s), said once.
    await pg.replica.start();
    const servedAfter = metricValue(await metrics(), 'replica_reads_total');
    await waitUntil('the replica serves again', async () => (await read(`/internal/sync?user=${l.users[1]}&limit=5`)) === 200 && metricValue(await metrics(), 'replica_reads_total') > servedAfter, 20_000, 100);
    const log = readFileSync(join(dir, `${tag}-persist.log`), 'utf8');
    expect(log.split('\n').filter((line) => line.includes('the read replica serves history and sync again')).length).toBe(1);
  }, 180_000);
});
