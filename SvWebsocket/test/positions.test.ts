/**
 * Positions (PROTOCOL.md v1.1): every message's `seq` in its conversation, assigned at
 * acceptance, in the ack and every message, the same for a resend, dense, and never shared,
 * even when Redis forgets its counters.
 */
import { describe, it, expect } from 'vitest';
import { createClient } from 'redis';
import type { ProtocolSocket } from '@simplechat/shared';
import { services } from '../../test/services';
import { clusterPerFile, uid } from '../../test/cluster';
import { eventually } from '../../test/helpers';

const cluster = clusterPerFile({ wsCount: 2 });
const connect = (user: string, i = 0) => cluster.connect(user, i);

describe('positions', () => {
  it('count 1, 2, 3 in a conversation whichever side and instance sends, and the live message carries its ack position', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const acks: Awaited<ReturnType<ProtocolSocket['request']>>[] = [];
    acks.push(await a.request({ type: 'send', id: 'p1', to: bob, body: 'one' }));
    acks.push(await b.request({ type: 'send', id: 'p2', to: alice, body: 'two' }));
    acks.push(await a.request({ type: 'send', id: 'p3', to: bob, body: 'three' }));
    expect(acks.map((x) => x.seq)).toEqual([1, 2, 3]);
    const live = await b.waitForMessage((m) => m.msgId === acks[2]?.msgId);
    expect(live.seq).toBe(3);
    // another conversation counts on its own
    expect((await a.request({ type: 'send', id: 'p4', to: uid('carol'), body: 'elsewhere' })).seq).toBe(1);
  });

  it('a resend of the same id on another instance gets the first position; history and sync carry the positions', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a1 = await connect(alice, 0);
    const a2 = await connect(alice, 1);
    const first = await a1.request({ type: 'send', id: 'r1', to: bob, body: 'hello' });
    await a1.request({ type: 'send', id: 'r2', to: bob, body: 'again' });
    const resent = await a2.request({ type: 'send', id: 'r1', to: bob, body: 'hello' });
    expect(resent).toMatchObject({ type: 'ack', msgId: first.msgId, seq: first.seq });
    const history = await eventually(async () => {
      const h = await a2.request({ type: 'history', with: bob });
      expect(h.messages).toHaveLength(2);
      return h;
    });
    expect((history.messages as { seq: number; body: string }[]).map((m) => [m.seq, m.body])).toEqual([
      [1, 'hello'],
      [2, 'again'],
    ]);
    const sync = await a2.request({ type: 'sync' });
    expect((sync.messages as { msgId: string; seq: number }[]).find((m) => m.msgId === first.msgId)?.seq).toBe(1);
  });

  it('after Redis forgets every counter, no position is handed out twice and each stored message keeps its own', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const before: Awaited<ReturnType<ProtocolSocket['request']>>[] = [];
    for (let i = 0; i < 5; i++) before.push(await a.request({ type: 'send', id: `f${i}`, to: bob, body: `before ${i}` }));
    const redis = createClient({ url: services().redisUrl });
    await redis.connect();
    try {
      const keys = await redis.keys(`${cluster.c.keyPrefix}pos*`);
      expect(keys.length).toBeGreaterThan(0);
      await redis.del(keys);
    } finally {
      await redis.quit();
    }
    const after = await a.request({ type: 'send', id: 'f-after', to: bob, body: 'after' });
    expect(after.seq).toBeGreaterThan(5);
    await eventually(async () => {
      const rows = (await cluster.c.db.query('SELECT position::int AS position FROM messages WHERE conversation_id = $1 ORDER BY position', [[alice, bob].sort().join(':')])).rows;
      expect(rows.map((r) => r.position)).toEqual([...before.map((x) => x.seq), after.seq]);
    });
  });
});
