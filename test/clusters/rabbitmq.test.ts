/**
 * SimpleChat on a three-node RabbitMQ cluster started here: quorum queues,
 * QUEUE_PARTITIONS=2, two SvPersist (one active and one standing by per
 * partition, each active on one once they are balanced), two gateways, the fault suite's load and books. First the core
 * with no fault, then (a) SIGKILL of the node holding a partition queue's
 * leader, (b) SIGKILL of an active SvPersist, and the two SvPersist sharing the
 * partitions (one each, partition-balance.ts). Every row must balance: stored
 * == acked, each exactly once, every acked message seen by every connection of
 * its recipient. Prints each fault's recovery time.
 *
 * Ports: RabbitMQ 5701-5703 (distribution 25701-25703), services 5711-5715.
 * Redis and Postgres are the machine's own, with this run's key prefix and
 * databases.
 */
import { randomBytes } from 'node:crypto';
import { describe, it, beforeAll, afterAll, expect } from 'vitest';
import { Client } from 'pg';
import { createClient } from 'redis';
import { directConversation, partitionOf, roomConversation } from '@simplechat/shared';
import { createDatabase, migrate } from '../../scripts/lib/db';
import { services } from '../services';
import { startRabbitCluster, type RabbitCluster, type RabbitNode } from './rabbit-cluster';
import { startCluster, createRoom, metricValue, TIMINGS, type Cluster, type ClusterInfra } from '../faults/cluster';
import { createLoad, type Load } from '../faults/load';
import { converge, closeBooks, type Books } from '../faults/books';
import { expectBalanced } from './balanced';
import { cleanupSync, tempDir, waitUntil } from '../faults/procs';

const PARTITIONS = 2;
const RABBIT_PORTS: [number, number, number] = [5701, 5702, 5703];
const PORTS = { discover: 5711, persist: [5712, 5713], ws: [5714, 5715] as [number, number] };
const run = randomBytes(2).toString('hex');
const WARMUP_ACKS = 60;
const AFTER_ACKS = 60;

let rabbit: RabbitCluster | undefined;
let infra: ClusterInfra | undefined;
const databases: string[] = [];
const adminUrl = (() => {
  const u = new URL(services().databaseUrl);
  u.pathname = '/postgres';
  return u.toString();
})();
const templateDb = `sc_rmq_${run}_template`;
const dbUrl = (name: string) => {
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  return u.toString();
};

async function admin<T>(fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}


/** The partition of a send of the load: its direct conversation, or its room. */
function partitionOfSend(sender: string, to: string): number {
  return partitionOf(to.startsWith('#') ? roomConversation(to.slice(1)) : directConversation(sender, to), PARTITIONS);
}

interface Scenario {
  cluster: Cluster;
  load: Load;
  books: Books;
}

/** A fresh SimpleChat cluster on the RabbitMQ cluster, warm traffic, `fault`, more traffic, then the books. */
async function scenario(name: string, fault?: (cluster: Cluster, load: Load) => Promise<void>): Promise<Scenario> {
  if (!infra || !rabbit) throw new Error('the clusters did not start');
  const tag = `r${run}${name}`;
  const cluster = await startCluster(infra, {
    tag,
    env: { AMQP_URLS: rabbit.urls.join(','), QUEUE_PARTITIONS: String(PARTITIONS), QUEUE_TYPE: 'quorum' },
    persistCount: 2,
    inspect: false,
    ports: PORTS,
  });
  const load = createLoad({ urls: cluster.wsUrls, users: 16, multi: 6, token: (u) => cluster.token(u), ratePerSec: 40, maxInFlightPerConn: 4, prefix: `${tag}-` });
  try {
    await load.ready(20_000);
    load.setRoom(await createRoom(cluster.wsUrls[0] as string, await cluster.token(load.users[0] as string), `${tag} room`, load.users), load.users);
    load.start();
    const acked = (since: number) => [...load.records.values()].filter((r) => r.ackedAt !== undefined && r.ackedAt >= since).length;
    await waitUntil('warm-up traffic acked', () => acked(0) >= WARMUP_ACKS, 30_000, 50);
    const faultAt = Date.now();
    await fault?.(cluster, load);
    const after = Date.now();
    await waitUntil('traffic after the fault acked', () => acked(after) >= AFTER_ACKS, 60_000, 50);
    load.stop();
    const settled = await converge(cluster, load, [], 45_000);
    const books = await closeBooks(cluster, load, [], faultAt, TIMINGS.SYNC_INTERVAL_MS);
    if (!settled.settled) books.details.push(`books did not settle within ${settled.ms} ms`);
    return { cluster, load, books };
  } catch (err) {
    const logs = [cluster.discover, ...cluster.persists, ...cluster.ws].map((n) => `--- ${n.name}\n${n.proc.tail(30)}`).join('\n');
    throw new Error(`${(err as Error).message}\n${logs}`);
  } finally {
    await load.close().catch(() => undefined);
    await cluster.stop();
    // the machine's Redis is shared: this scenario's keys go
    const redis = await createClient({ url: services().redisUrl }).connect();
    for await (const keys of redis.scanIterator({ MATCH: `${cluster.keyPrefix}*`, COUNT: 1000 })) if (keys.length) await redis.del(keys);
    await redis.quit();
  }
}


/** the partitions an SvPersist stored in the last 5 s (its simplechat_partition_active) */
async function activePartitions(n: Cluster['persist']): Promise<number[]> {
  const text = await n.metrics();
  return Array.from({ length: PARTITIONS }, (_, p) => p).filter((p) => metricValue(text, 'partition_active', `partition="${p}"`) === 1);
}

const report: string[] = [];

describe.sequential('RabbitMQ cluster: quorum queues, two partitions, two SvPersist', () => {
  beforeAll(async () => {
    const t0 = Date.now();
    const [cluster] = await Promise.all([
      startRabbitCluster({ ports: RABBIT_PORTS }),
      (async () => {
        await createDatabase(dbUrl(templateDb));
        databases.push(templateDb);
        await migrate(dbUrl(templateDb));
      })(),
    ]);
    rabbit = cluster;
    report.push(`three RabbitMQ nodes running after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    infra = {
      redis: { url: services().redisUrl },
      rabbit: { url: cluster.urls[0] as string },
      dir: tempDir('rabbitmq-test'),
      async createScenarioDb(name) {
        await admin(async (c) => {
          await c.query(`DROP DATABASE IF EXISTS "${name}"`);
          await c.query(`CREATE DATABASE "${name}" TEMPLATE "${templateDb}"`);
        });
        databases.push(name);
        return dbUrl(name);
      },
    };
  }, 150_000);

  afterAll(async () => {
    await rabbit?.close();
    await admin(async (c) => {
      for (const name of databases.reverse()) await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    }).catch(() => undefined);
    cleanupSync();
    console.log(`\nRabbitMQ cluster tests:\n  ${report.join('\n  ')}\n`);
  }, 60_000);

  it('messages, receipts and sync across two gateways and two SvPersist on quorum partition queues', async () => {
    const { books, cluster } = await scenario('core');
    expectBalanced(books);
    report.push(`core: ${books.acked} acked, ${books.stored} stored, lost ${books.lost}, duplicated ${books.duplicated}`);
    expect(cluster.persists).toHaveLength(2);
  }, 120_000);

  it('(b) SIGKILL of an active SvPersist: the other takes over its partitions, books exact', async () => {
    let recoveryMs = 0;
    let taken: number[] = [];
    const { books } = await scenario('svpersist', async (cluster) => {
      const [victim, other] = cluster.persists as [Cluster['persist'], Cluster['persist']];
      // Started first, the first SvPersist is active on every partition until it hands its
      // surplus to the second (partition-balance.ts); it stores something either way.
      await waitUntil('the first SvPersist stores', async () => (await activePartitions(victim)).length > 0, 30_000, 50);
      taken = await activePartitions(victim);
      const killedAt = Date.now();
      victim.kill('SIGKILL');
      await waitUntil('the other SvPersist stores the killed one\'s partitions', async () => {
        const now = await activePartitions(other);
        return taken.every((p) => now.includes(p));
      }, 30_000, 50);
      recoveryMs = Date.now() - killedAt;
      // As a supervisor would: the killed one comes back (the gateways read history and reserve
      // positions through it), now standing by.
      await victim.start();
    });
    report.push(`(b) active SvPersist SIGKILL: the other storing its partitions ${taken.join(', ')} ${recoveryMs} ms after the kill; ${books.acked} acked, ${books.stored} stored, lost ${books.lost}, duplicated ${books.duplicated}, books recovery ${(books.recoveryMs / 1000).toFixed(1)} s`);
    expectBalanced(books);
  }, 150_000);

  it('two SvPersist share the partitions: the one started first steps back from one of two', async () => {
    let shares: number[][] = [];
    const { books } = await scenario('balance', async (cluster) => {
      const [first, second] = cluster.persists as [Cluster['persist'], Cluster['persist']];
      await waitUntil('each SvPersist stores one partition', async () => {
        shares = [await activePartitions(first), await activePartitions(second)];
        return shares.every((a) => a.length === 1);
      }, 30_000, 100);
      expect(metricValue(await first.metrics(), 'partition_step_backs_total')).toBeGreaterThanOrEqual(1);
    });
    report.push(`balance: first SvPersist storing partition ${shares[0]?.join(', ')}, second ${shares[1]?.join(', ')}; ${books.acked} acked, ${books.stored} stored, lost ${books.lost}, duplicated ${books.duplicated}`);
    expectBalanced(books);
  }, 150_000);

  it('(a) SIGKILL of the RabbitMQ node holding a partition queue leader: publishes and consumers move on, books exact', async () => {
    let recoveryMs = 0;
    let killed: RabbitNode | undefined;
    const { books } = await scenario('leader', async (cluster, load) => {
      if (!rabbit) throw new Error('no cluster');
      const queue = `${cluster.queuePrefix}messages.p0`;
      killed = await rabbit.leaderOf(queue);
      const killedAt = Date.now();
      await killed.kill();
      // Acks flowing again on partition 0: a send of that partition first sent after the kill is acked.
      await waitUntil(
        'a partition 0 send after the kill acked',
        () => [...load.records.values()].some((r) => r.firstSentAt > killedAt && r.ackedAt !== undefined && partitionOfSend(r.sender, r.to) === 0),
        60_000,
        50,
      );
      recoveryMs = Math.min(...[...load.records.values()].filter((r) => r.firstSentAt > killedAt && r.ackedAt !== undefined && partitionOfSend(r.sender, r.to) === 0).map((r) => (r.ackedAt as number) - killedAt));
    });
    report.push(`(a) leader node ${killed?.name ?? '?'} SIGKILL: partition 0 acks flowing again ${recoveryMs} ms after the kill; ${books.acked} acked, ${books.stored} stored, lost ${books.lost}, duplicated ${books.duplicated}, books recovery ${(books.recoveryMs / 1000).toFixed(1)} s`);
    expectBalanced(books);
    // The killed node comes back with its data and joins the cluster again.
    if (killed && rabbit) {
      const ms = await killed.start();
      await waitUntil('three running nodes again', async () => (await (rabbit as RabbitCluster).runningNodes()).length === 3, 60_000, 500);
      report.push(`(a) ${killed.name} restarted and running in the cluster after ${(ms / 1000).toFixed(1)} s`);
    }
  }, 180_000);
});
