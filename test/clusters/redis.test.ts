/**
 * SimpleChat on a real Redis Cluster (3 masters, 3 replicas; redis-cluster.ts),
 * REDIS_CLUSTER_NODES on SvDiscover and both gateways:
 *   - the core of the integration suite, services built in-process: direct
 *     messages across instances, an idempotent resend, positions, a room with
 *     members on both instances, presence, receipts, sync after a reconnect,
 *     and the change feed moving to another node when its master dies;
 *   - a master failover under the fault suite's load, with its books: the
 *     replica of the master holding the room's positions is stopped (so the
 *     master's latest writes are never replicated), the master is SIGKILLed,
 *     the replica resumes and takes over. Every acked message is stored once
 *     at the position its ack named, seen by every connection of its
 *     recipient, no two share a position, and resends of messages acked while
 *     the writes were being lost keep their first msgId.
 *
 *   npx vitest run test/clusters/redis.test.ts
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient, createCluster } from 'redis';
import { ProtocolSocket, conversationKey, directConversation, keyBucket, roomConversation } from '@simplechat/shared';
import { startCluster as startTestCluster, uid, type TestCluster } from '../cluster';
import { eventually } from '../helpers';
import { startInfra, type Infra } from '../faults/infra';
import { metricValue, startCluster as startProcessCluster, TIMINGS } from '../faults/cluster';
import { createLoad, type Conn } from '../faults/load';
import { closeBooks, converge } from '../faults/books';
import { expectBalanced } from './balanced';
import { claimsMatch } from '../faults/scenarios';
import { cleanupSync, waitUntil } from '../faults/procs';
import type { RedisClusterHandle } from './redis-cluster';

let infra: Infra;
let redisCluster: RedisClusterHandle;

beforeAll(async () => {
  infra = await startInfra({ redisCluster: true });
  redisCluster = infra.redisCluster as RedisClusterHandle;
}, 120_000);

afterAll(async () => {
  await infra?.close();
  cleanupSync();
}, 60_000);

describe.sequential('on a Redis Cluster, two gateways', () => {
  let c: TestCluster;
  const open: ProtocolSocket[] = [];
  const connect = async (user: string, i = 0) => {
    const s = await c.connect(user, i);
    open.push(s);
    return s;
  };

  beforeAll(async () => {
    c = await startTestCluster({ wsCount: 2, redisClusterNodes: redisCluster.seeds });
  }, 60_000);
  afterAll(async () => {
    for (const s of open) s.close();
    await c?.close();
  });

  it('a direct message to a user on the other instance is acked, delivered once and stored once', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const ack = await a.request({ type: 'send', id: 'x1', to: bob, body: 'across' });
    expect(ack).toMatchObject({ type: 'ack', id: 'x1', seq: 1 });
    const m = await b.waitForMessage((x) => x.msgId === ack.msgId);
    expect(m).toMatchObject({ from: alice, to: bob, body: 'across', ts: ack.ts, seq: 1 });
    const back = await b.request({ type: 'send', id: 'y1', to: alice, body: 'and back' });
    await a.waitForMessage((x) => x.msgId === back.msgId);
    expect(b.messages().filter((x) => x.msgId === ack.msgId)).toHaveLength(1);
    await eventually(async () => expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE id = ANY($1)', [[ack.msgId, back.msgId]])).rows[0].n).toBe(2));
  });

  it('a resend of the same id, on either instance, gets the first msgId, ts and position, and is stored once', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a1 = await connect(alice, 0);
    const first = await a1.request({ type: 'send', id: 'dup', to: bob, body: 'original' });
    const again = await a1.request({ type: 'send', id: 'dup', to: bob, body: 'original' });
    const a2 = await connect(alice, 1);
    const elsewhere = await a2.request({ type: 'send', id: 'dup', to: bob, body: 'changed' });
    for (const r of [again, elsewhere]) expect(r).toMatchObject({ type: 'ack', msgId: first.msgId, ts: first.ts, seq: first.seq });
    await eventually(async () => expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE sender = $1', [alice])).rows[0].n).toBe(1));
  });

  it("positions count 1, 2, 3... in a conversation whichever side and instance sends, each sender's msgIds in order", async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const acks = [];
    for (let i = 0; i < 6; i++) acks.push(await (i % 2 === 0 ? a : b).request({ type: 'send', id: `p${i}`, to: i % 2 === 0 ? bob : alice, body: `n${i}` }));
    expect(acks.map((k) => k.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    // a burst in one tick: consecutive positions, no two alike
    const burst = await Promise.all(Array.from({ length: 30 }, (_, i) => a.request({ type: 'send', id: `q${i}`, to: bob, body: `burst ${i}` })));
    expect(burst.map((k) => k.seq).sort((x, y) => Number(x) - Number(y))).toEqual(Array.from({ length: 30 }, (_, i) => i + 7));
    const key = conversationKey(directConversation(alice, bob));
    await eventually(async () => {
      const rows = (await c.db.query('SELECT position::int AS position FROM messages WHERE conversation_id = $1 ORDER BY position', [key])).rows;
      expect(rows.map((r) => r.position)).toEqual(Array.from({ length: 36 }, (_, i) => i + 1));
    });
  });

  it('a room with members on both instances: every member connection gets each message, positions count per room', async () => {
    const [alice, bob, carol] = [uid('alice'), uid('bob'), uid('carol')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const cc = await connect(carol, 0);
    const info = await a.request({ type: 'room.create', name: 'Team', members: [bob, carol] });
    expect(info).toMatchObject({ type: 'room.info', owner: alice, members: [alice, bob, carol] });
    const room = info.room as string;
    const m1 = await a.request({ type: 'send', room, body: 'hello room' });
    const m2 = await b.request({ type: 'send', room, body: 'hi from the other instance' });
    expect([m1.seq, m2.seq]).toEqual([1, 2]);
    for (const [s, ids] of [[b, [m1.msgId]], [cc, [m1.msgId, m2.msgId]], [a, [m2.msgId]]] as const) for (const id of ids) await s.waitForMessage((x) => x.msgId === id && x.room === room);
    // a change of membership takes effect on both instances before it is answered
    const removed = await a.request({ type: 'room.remove', room, userId: carol });
    expect(removed).toMatchObject({ type: 'room.info', members: [alice, bob] });
    expect(await cc.request({ type: 'send', room, body: 'still here?' })).toMatchObject({ type: 'error', code: 'forbidden' });
    await eventually(async () => expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE conversation_id = $1', [conversationKey(roomConversation(room))])).rows[0].n).toBe(2));
  });

  it('presence: online while connected on either instance, offline with lastSeen once the last connection closed', async () => {
    const [watcher, eve] = [uid('watcher'), uid('eve')];
    const w = await connect(watcher, 0);
    expect((await w.request({ type: 'presence.watch', users: [eve] })).users).toEqual({ [eve]: { online: false } });
    const e = await connect(eve, 1);
    await w.waitFor((f) => f.type === 'presence' && f.id === undefined && (f.users as Record<string, { online: boolean }>)[eve]?.online === true, 'eve online');
    const closedAt = Date.now();
    e.close();
    const offline = await w.waitFor((f) => f.type === 'presence' && f.id === undefined && (f.users as Record<string, { online: boolean }>)[eve]?.online === false, 'eve offline', 4000);
    expect((offline.users as Record<string, { lastSeen: number }>)[eve]?.lastSeen).toBeGreaterThanOrEqual(closedAt - 50);
  });

  it('receipts reach the other side on the other instance, move forward only and are stored', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    for (let i = 1; i <= 3; i++) await b.request({ type: 'send', to: alice, body: `m${i}` });
    a.send({ type: 'receipt', kind: 'read', with: bob, upTo: 2 });
    expect(await b.waitFor((f) => f.type === 'receipt')).toEqual({ type: 'receipt', kind: 'read', by: alice, with: alice, upTo: 2, ts: expect.any(Number) });
    a.send({ type: 'receipt', kind: 'read', with: bob, upTo: 1 });
    a.send({ type: 'receipt', kind: 'delivered', with: bob, upTo: 3 });
    await eventually(() => expect(b.frames.filter((f) => f.type === 'receipt').map((f) => [f.kind, f.upTo])).toEqual([['read', 2], ['delivered', 3]]));
    expect(await a.request({ type: 'receipt', kind: 'read', with: bob, upTo: 9 })).toMatchObject({ type: 'error', code: 'bad_request' });
    const key = conversationKey(directConversation(alice, bob));
    await eventually(async () => expect((await c.db.query('SELECT delivered_up_to::int AS d, read_up_to::int AS r FROM marks WHERE conversation_id = $1 AND user_id = $2', [key, alice])).rows[0]).toEqual({ d: 3, r: 2 }));
  });

  it('a user who was away catches up with sync from its saved cursor', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const b = await connect(bob, 1);
    const saved = (b.frames.find((f) => f.type === 'registered')?.cursor as string) ?? '0';
    b.close();
    await b.waitForClose();
    const a = await connect(alice, 0);
    const sent: string[] = [];
    for (let i = 0; i < 5; i++) sent.push((await a.request({ type: 'send', id: `s${i}`, to: bob, body: `while away ${i}` })).msgId as string);
    await eventually(async () => expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE recipient = $1', [bob])).rows[0].n).toBe(5));
    const back = await connect(bob, 0);
    const got: string[] = [];
    let cursor = saved;
    for (;;) {
      const page = await back.request({ type: 'sync', after: cursor, limit: 2 });
      got.push(...(page.messages as { msgId: string }[]).map((m) => m.msgId));
      cursor = page.cursor as string;
      if (!page.more) break;
    }
    expect(got).toEqual(sent);
  });

  it('the change feed moves to another node when the master it listens on dies, and comes back subscribed', async () => {
    const subscribedOf = async (i: number) => metricValue(await (c.ws[i] as TestCluster['ws'][number]).metrics.render(), 'discovery_changes_subscribed');
    await eventually(async () => expect([await subscribedOf(0), await subscribedOf(1)]).toEqual([1, 1]));
    const where = await subscriberNodes();
    const name = 'simplechat-changes-ws-1';
    const port = where.get(name) as number;
    expect(port, `${name} listens on a node`).toBeDefined();
    await redisCluster.kill(port);
    // Another master takes over the dead one's slots; ws-1's feed gives up on that node and moves.
    await eventually(async () => expect(await subscribedOf(0)).toBe(0), { timeoutMs: 10_000 });
    await eventually(async () => expect(await subscribedOf(0)).toBe(1), { timeoutMs: 20_000, intervalMs: 100 });
    const moved = (await subscriberNodes()).get(name);
    expect(moved).toBeDefined();
    expect(moved).not.toBe(port);
    // Once a replica took over, one cluster again: a message crosses instances live, and the dead node comes back as a replica.
    await redisCluster.waitFailover(port, 20_000);
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    // (each service learns the new master within a moment of it taking over: until then a send may be answered unavailable)
    await eventually(
      async () => {
        const ack = await a.request({ type: 'send', to: bob, body: 'after the failover' });
        expect(ack.type).toBe('ack');
        await b.waitForMessage((m) => m.msgId === ack.msgId, 1000);
      },
      { timeoutMs: 5000, intervalMs: 100 },
    );
    await redisCluster.restart(port);
  }, 60_000);
});

/** The node each change-feed connection (named simplechat-changes-<instance>) is on, from CLIENT LIST of every live node. */
async function subscriberNodes(): Promise<Map<string, number>> {
  const where = new Map<string, number>();
  for (const n of redisCluster.nodes.filter((x) => x.isRunning())) {
    const c = createClient({ socket: { host: '127.0.0.1', port: n.port, reconnectStrategy: false } });
    c.on('error', () => undefined);
    await c.connect();
    try {
      for (const line of String(await c.sendCommand(['CLIENT', 'LIST'])).split('\n')) {
        const name = /\bname=(simplechat-changes-\S+)/.exec(line)?.[1];
        if (name && /\bsub=[1-9]/.test(line)) where.set(name, n.port);
      }
    } finally {
      c.destroy();
    }
  }
  return where;
}

/** How many of these keys the cluster does not hold. */
async function countMissing(keys: string[]): Promise<number> {
  const admin = createCluster({ rootNodes: redisCluster.seeds.split(',').map((s) => ({ url: `redis://${s}` })) });
  admin.on('error', () => undefined);
  await admin.connect();
  try {
    const found = await Promise.all(keys.map((k) => admin.exists(k)));
    return found.filter((n) => n === 0).length;
  } finally {
    admin.destroy();
  }
}

describe.sequential('a Redis master failover under load', () => {
  it('SIGKILL of the master of the busiest slot, its latest writes lost: books exact, no position twice, resends keep their msgId', async () => {
    const tag = `rc${randomBytes(2).toString('hex')}`;
    const cluster = await startProcessCluster(infra, { tag });
    const load = createLoad({ urls: cluster.wsUrls, users: 24, multi: 8, token: (u) => cluster.token(u), ratePerSec: 40, maxInFlightPerConn: 4, prefix: `${tag}-` });
    const notes: string[] = [];
    try {
      await load.ready(15_000);
      const info = await (async () => {
        const s = await ProtocolSocket.open(cluster.wsUrls[0] as string);
        try {
          await s.register(await cluster.token(load.users[0] as string));
          return await s.request({ type: 'room.create', name: `${tag} room`, members: load.users });
        } finally {
          s.close();
        }
      })();
      const room = info.room as string;
      load.setRoom(room, load.users);
      load.start();
      await waitUntil('warm-up traffic acked', () => [...load.records.values()].filter((r) => r.ackedAt !== undefined).length >= 80, 30_000, 50);

      // The busiest slot: the room's positions (a quarter of the traffic goes to it).
      const busyKey = `${cluster.keyPrefix}pos:{${room}}${room}`;
      const owner = await redisCluster.ownerOf(busyKey);
      const replica = owner.replicas[0];
      expect(replica, `the master of ${busyKey} has a replica`).toBeDefined();
      // Its replica stops replicating: what the master accepts from now on is lost with it.
      redisCluster.pause(replica as number);
      await redisCluster.dropReplicaLinks(owner.master);
      const pausedAt = Date.now();
      await waitUntil('traffic while the replica is stopped', () => [...load.records.values()].filter((r) => (r.ackedAt ?? 0) > pausedAt).length >= 20, 10_000, 20);
      const masterOffset = Number((await redisCluster.replication(owner.master)).master_repl_offset);
      await redisCluster.kill(owner.master);
      const killedAt = Date.now();
      redisCluster.resume(replica as number);
      const ackedWhileLosing = [...load.records.values()].filter((r) => r.msgId !== undefined && (r.ackedAt ?? 0) > pausedAt && (r.ackedAt ?? 0) <= killedAt);
      await redisCluster.waitFailover(owner.master, 20_000);
      const failoverMs = Date.now() - killedAt;
      const promoted = await redisCluster.ownerOf(busyKey);
      notes.push(`master ${owner.master} (slot ${owner.slot}) killed ${killedAt - pausedAt} ms after its replica ${replica} stopped replicating; ${ackedWhileLosing.length} messages acked meanwhile; replica ${promoted.master} took over in ${failoverMs} ms`);

      // Sends into the busy slot (the room) are acked again: the first ack of a room message sent after the kill.
      await waitUntil('room sends acked again', () => [...load.records.values()].some((r) => r.to === `#${room}` && r.firstSentAt > killedAt && r.ackedAt !== undefined), 30_000, 20);
      const roomAckedAgainMs = Math.min(...[...load.records.values()].filter((r) => r.to === `#${room}` && r.firstSentAt > killedAt && r.ackedAt !== undefined).map((r) => (r.ackedAt as number) - killedAt));
      // The longest time after the kill with no ack at all (every slot stops while the cluster says it is down).
      const acksAfter = [killedAt, ...[...load.records.values()].map((r) => r.ackedAt ?? 0).filter((t) => t > killedAt)].sort((x, y) => x - y);
      const noAckMs = Math.max(...acksAfter.slice(1).map((t, i) => t - (acksAfter[i] as number)));

      // The failover did lose writes: the replica took over at an offset short of the master's.
      const promotedAt = Number((await redisCluster.replication(promoted.master)).second_repl_offset) - 1;
      const lostRecords = await countMissing(ackedWhileLosing.map((r) => `${cluster.keyPrefix}idem:{s${keyBucket(r.sender, 128)}}${r.sender}:${r.id}`));
      notes.push(`the replica took over ${masterOffset - promotedAt} bytes of replication stream short of the master; ${lostRecords} of the ${ackedWhileLosing.length} idempotency records of messages acked meanwhile were lost`);
      expect(masterOffset - promotedAt, notes.join('\n')).toBeGreaterThan(0);

      // Messages acked while the writes were being lost, resent as if their acks had been lost: their first msgId.
      const before = new Map(ackedWhileLosing.map((r) => [`${r.sender}|${r.id}`, r.msgId]));
      await Promise.all(ackedWhileLosing.map((r) => load.send(load.connsOf(r.sender)[0] as Conn, r.to, r.body, r.id)));
      const changed = ackedWhileLosing.filter((r) => r.ackMsgIds.size > 1 || r.msgId !== before.get(`${r.sender}|${r.id}`));
      expect(changed.map((r) => `${r.sender}|${r.id}: ${[...r.ackMsgIds].join(',')}`)).toEqual([]);

      const afterKill = () => [...load.records.values()].filter((r) => (r.ackedAt ?? 0) > killedAt).length;
      await waitUntil('traffic after the failover acked', () => afterKill() >= 80, 60_000, 50);
      load.stop();
      const settled = await converge(cluster, load, [], 45_000);
      if (!settled.settled) notes.push(`books did not settle within ${settled.ms} ms`);
      await waitUntil('claims match the connections again', () => claimsMatch(cluster, load), TIMINGS.LEASE_MS * 5, 100);
      const books = await closeBooks(cluster, load, [], killedAt, TIMINGS.SYNC_INTERVAL_MS);
      const twice = await cluster.query<{ conversation_id: string; position: number; n: number }>('SELECT conversation_id, position::int AS position, count(*)::int AS n FROM messages GROUP BY conversation_id, position HAVING count(*) > 1');
      const summary = [...notes, ...books.details, ...twice.map((t) => `position ${t.position} of ${t.conversation_id} holds ${t.n} messages`)].join('\n');
      console.log(
        `\nRedis Cluster failover under load: acked ${books.acked}, stored ${books.stored}, lost ${books.lost}, duplicated ${books.duplicated}; ` +
          `failover ${(failoverMs / 1000).toFixed(1)} s, room sends acked again after ${(roomAckedAgainMs / 1000).toFixed(1)} s, longest time without any ack ${(noAckMs / 1000).toFixed(1)} s, ` +
          `service whole again after ${(books.recoveryMs / 1000).toFixed(1)} s\n${notes.join('\n')}\n`,
      );
      expectBalanced(books, { notes, late: true });
      expect(twice, summary).toEqual([]);
    } catch (err) {
      for (const n of [cluster.discover, ...cluster.ws]) console.log(`--- ${n.name}\n${n.proc.tail(30)}`);
      throw err;
    } finally {
      await load.close().catch(() => undefined);
      await cluster.stop();
    }
  }, 150_000);
});
