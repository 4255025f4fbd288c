/**
 * Positions (PROTOCOL.md v1.1): every message's `seq` in its conversation, assigned at
 * acceptance, in the ack and every message, the same for a resend, dense, and never shared,
 * even when Redis forgets its counters.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createClient } from 'redis';
import { ProtocolSocket } from '@simplechat/shared';
import { services } from '../../test/services';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { eventually } from '../../test/helpers';

let c: TestCluster;
const open: ProtocolSocket[] = [];
async function connect(user: string, i = 0): Promise<ProtocolSocket> {
  const s = await c.connect(user, i);
  open.push(s);
  return s;
}

beforeAll(async () => {
  c = await startCluster({ wsCount: 2 });
});
afterAll(async () => {
  for (const s of open) s.close();
  await c?.close();
});

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
      const keys = await redis.keys(`${c.keyPrefix}pos*`);
      expect(keys.length).toBeGreaterThan(0);
      await redis.del(keys);
    } finally {
      await redis.quit();
    }
    const after = await a.request({ type: 'send', id: 'f-after', to: bob, body: 'after' });
    expect(after.seq).toBeGreaterThan(5);
    await eventually(async () => {
      const rows = (await c.db.query('SELECT position::int AS position FROM messages WHERE conversation_id = $1 ORDER BY position', [[alice, bob].sort().join(':')])).rows;
      expect(rows.map((r) => r.position)).toEqual([...before.map((x) => x.seq), after.seq]);
    });
  });
});
