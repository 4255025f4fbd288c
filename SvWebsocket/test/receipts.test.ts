/**
 * Receipts and the conversation list (PROTOCOL.md v1.1 "Receipts and
 * conversations") on a two-instance cluster with the real services: marks by
 * position pushed to the other side and the reader's other connections,
 * forward only, checked, stored through the broker; room marks coalesced, and
 * asked for (`room.marks`); `conversations` with exact unread counts after
 * interleaved sends and reads.
 */
import { describe, expect, it } from 'vitest';
import { createClient } from 'redis';
import { conversationKey, directConversation, roomConversation, type ProtocolSocket } from '@simplechat/shared';
import { clusterPerFile, uid } from '../../test/cluster';
import { eventually } from '../../test/helpers';
import { services } from '../../test/services';

const cluster = clusterPerFile({ wsCount: 2 });
const connect = (user: string, i = 0) => cluster.connect(user, i);
const receipts = (s: ProtocolSocket) => s.frames.filter((f) => f.type === 'receipt');
/** A direct message from `from` to `to`, awaited on `toSocket`: what was routed to it before has arrived. */
async function flushed(from: ProtocolSocket, to: string, toSocket: ProtocolSocket): Promise<void> {
  const marker = await from.request({ type: 'send', to, body: 'marker' });
  await toSocket.waitForMessage((m) => m.msgId === marker.msgId);
}
async function storedMarks(conversation: string, user: string) {
  const { rows } = await cluster.c.db.query('SELECT delivered_up_to::int AS delivered, read_up_to::int AS read FROM marks WHERE conversation_id = $1 AND user_id = $2', [conversation, user]);
  return rows[0] as { delivered: number; read: number } | undefined;
}
async function conversationWith(s: ProtocolSocket, key: { with: string } | { room: string }) {
  const answer = await s.request({ type: 'conversations' });
  expect(answer.type).toBe('conversations');
  return (answer.conversations as Record<string, unknown>[]).find((c) => ('with' in key ? c.with === key.with : c.room === key.room));
}

describe('receipts', () => {
  it("a direct mark reaches the other side's connections and the reader's others, with `with` as each sees it; older marks are ignored; it is stored", async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a1 = await connect(alice, 0);
    const a2 = await connect(alice, 1);
    const b1 = await connect(bob, 1);
    const b2 = await connect(bob, 0);
    for (let i = 1; i <= 3; i++) await b1.request({ type: 'send', to: alice, body: `m${i}` });
    a1.send({ type: 'receipt', id: 'r-1', kind: 'read', with: bob, upTo: 2 });
    for (const s of [b1, b2]) {
      const r = await s.waitFor((f) => f.type === 'receipt');
      expect(r).toEqual({ type: 'receipt', kind: 'read', by: alice, with: alice, upTo: 2, ts: expect.any(Number) });
    }
    expect(await a2.waitFor((f) => f.type === 'receipt')).toEqual({ type: 'receipt', kind: 'read', by: alice, with: bob, upTo: 2, ts: expect.any(Number) });
    // an older mark, and a delivered mark below the read one: no push, no error
    a1.send({ type: 'receipt', id: 'r-2', kind: 'read', with: bob, upTo: 1 });
    a1.send({ type: 'receipt', id: 'r-3', kind: 'delivered', with: bob, upTo: 2 });
    a1.send({ type: 'receipt', id: 'r-4', kind: 'delivered', with: bob, upTo: 3 });
    await eventually(() => expect(receipts(b1)).toHaveLength(2));
    expect(receipts(b1)[1]).toMatchObject({ kind: 'delivered', upTo: 3 });
    await flushed(a1, bob, b1);
    await flushed(a1, alice, a2);
    expect(receipts(b1)).toHaveLength(2);
    expect(receipts(a1)).toHaveLength(0);
    expect(a1.frames.filter((f) => f.type === 'error')).toEqual([]);
    const key = conversationKey(directConversation(alice, bob));
    await eventually(async () => expect(await storedMarks(key, alice)).toEqual({ delivered: 3, read: 2 }));
  });

  it('refusals carry the request id: beyond the highest position is bad_request, a room one is not in forbidden, no room not_found, a bad kind bad_request', async () => {
    const [carl, dora, eli] = [uid('carl'), uid('dora'), uid('eli')];
    const c = await connect(carl, 0);
    const d = await connect(dora, 1);
    await c.request({ type: 'send', to: dora, body: 'one' });
    expect(await d.request({ type: 'receipt', id: 'x-1', kind: 'read', with: carl, upTo: 2 })).toMatchObject({ type: 'error', id: 'x-1', code: 'bad_request', message: expect.stringContaining('beyond position 1') });
    // nothing was ever sent between dora and eli
    expect(await d.request({ type: 'receipt', id: 'x-2', kind: 'read', with: eli, upTo: 1 })).toMatchObject({ type: 'error', id: 'x-2', code: 'bad_request' });
    const room = (await c.request({ type: 'room.create', name: 'Closed', members: [] })).room as string;
    expect(await d.request({ type: 'receipt', id: 'x-3', kind: 'read', room, upTo: 0 })).toMatchObject({ type: 'error', id: 'x-3', code: 'forbidden' });
    expect(await d.request({ type: 'receipt', id: 'x-4', kind: 'read', room: 'r_NOSUCHROOM', upTo: 0 })).toMatchObject({ type: 'error', id: 'x-4', code: 'not_found' });
    expect(await d.request({ type: 'receipt', id: 'x-5', kind: 'seen', with: carl, upTo: 1 })).toMatchObject({ type: 'error', id: 'x-5', code: 'bad_request', message: expect.stringContaining('kind') });
    expect(await d.request({ type: 'receipt', id: 'x-6', kind: 'read', with: carl, upTo: -1 })).toMatchObject({ type: 'error', id: 'x-6', code: 'bad_request' });
  });

  it('room marks reach every member connection coalesced: at most one frame per connection, room and kind per second, with the newest mark of each reader', async () => {
    const [owner, m1, m2] = [uid('owner'), uid('mem1'), uid('mem2')];
    const o = await connect(owner, 0);
    const s1 = await connect(m1, 1);
    const s2 = await connect(m2, 0);
    const room = (await o.request({ type: 'room.create', name: 'Marks', members: [m1, m2] })).room as string;
    for (let i = 0; i < 5; i++) await o.request({ type: 'send', room, body: `r${i}` });
    // readers on both instances, several marks each within a second
    for (let upTo = 1; upTo <= 5; upTo++) {
      s1.send({ type: 'receipt', kind: 'read', room, upTo });
      s2.send({ type: 'receipt', kind: 'read', room, upTo: Math.min(upTo + 1, 5) });
    }
    const watchers = [o, s1, s2];
    for (const s of watchers) {
      await eventually(() => {
        const merged: Record<string, number> = {};
        for (const f of receipts(s)) for (const [u, v] of Object.entries(f.marks as Record<string, number>)) merged[u] = Math.max(merged[u] ?? 0, v);
        expect(merged).toEqual({ [m1]: 5, [m2]: 5 });
      });
      const frames = receipts(s);
      for (const f of frames) expect(f).toMatchObject({ type: 'receipt', kind: 'read', room, ts: expect.any(Number) });
      // ten marks in well under two seconds: a frame at once, then at most one per second
      for (let i = 1; i < frames.length; i++) expect((frames[i]?.ts as number) - (frames[i - 1]?.ts as number)).toBeGreaterThanOrEqual(1000);
      expect(frames.length).toBeLessThanOrEqual(3);
    }
  });

  it('room.marks: every current member\'s marks, moved ones at once, from storage once Redis forgot them, from where a member joined; members only', async () => {
    const [owner, m1, m2, late, outsider] = [uid('owner'), uid('mem1'), uid('mem2'), uid('late'), uid('outsider')];
    const o = await connect(owner, 0);
    const s1 = await connect(m1, 1);
    const s2 = await connect(m2, 0);
    const room = (await o.request({ type: 'room.create', name: 'Seen by', members: [m1, m2] })).room as string;
    for (let i = 0; i < 4; i++) await o.request({ type: 'send', room, body: `r${i}` });
    s1.send({ type: 'receipt', kind: 'read', room, upTo: 3 });
    s2.send({ type: 'receipt', kind: 'delivered', room, upTo: 4 });
    // pushed: the marks moved (in Redis); storage may not have them yet
    await eventually(() => expect(receipts(o).map((f) => f.kind).sort()).toEqual(['delivered', 'read']));
    expect(await s2.request({ type: 'room.marks', id: 'rm-1', room })).toEqual({
      type: 'room.marks',
      id: 'rm-1',
      room,
      delivered: { [owner]: 0, [m1]: 3, [m2]: 4 },
      read: { [owner]: 0, [m1]: 3, [m2]: 0 },
    });
    // a member added at position 4 starts there; a removed one is no longer listed
    await o.request({ type: 'room.add', room, userId: late });
    await o.request({ type: 'room.remove', room, userId: m2 });
    expect(await s1.request({ type: 'room.marks', room })).toMatchObject({ delivered: { [owner]: 0, [m1]: 3, [late]: 4 }, read: { [owner]: 0, [m1]: 3, [late]: 4 } });
    // Redis forgets the room's marks: storage has them
    const redis = await createClient({ url: services().redisUrl }).connect();
    try {
      await eventually(async () => expect(await storedMarks(room, m1)).toEqual({ delivered: 3, read: 3 }));
      await redis.del(`${cluster.c.keyPrefix}marks:${conversationKey(roomConversation(room))}`);
    } finally {
      await redis.quit();
    }
    expect(await s1.request({ type: 'room.marks', room })).toMatchObject({ delivered: { [m1]: 3 }, read: { [m1]: 3 } });
    // members only; no such room; not a room id
    const x = await connect(outsider, 1);
    expect(await x.request({ type: 'room.marks', id: 'rm-2', room })).toMatchObject({ type: 'error', id: 'rm-2', code: 'forbidden' });
    expect(await s2.request({ type: 'room.marks', id: 'rm-3', room })).toMatchObject({ type: 'error', id: 'rm-3', code: 'forbidden' });
    expect(await x.request({ type: 'room.marks', id: 'rm-4', room: 'r_NOSUCHROOM' })).toMatchObject({ type: 'error', id: 'rm-4', code: 'not_found' });
    expect(await x.request({ type: 'room.marks', id: 'rm-5', room: 'not a room' })).toMatchObject({ type: 'error', id: 'rm-5', code: 'bad_request', message: expect.stringContaining('room') });
  });

  it('a new room member is unread only from where it joined; its marks start there', async () => {
    const [owner, late] = [uid('owner'), uid('late')];
    const o = await connect(owner, 0);
    const room = (await o.request({ type: 'room.create', name: 'Later', members: [] })).room as string;
    for (let i = 0; i < 3; i++) await o.request({ type: 'send', room, body: `before ${i}` });
    await o.request({ type: 'room.add', room, userId: late });
    const l = await connect(late, 1);
    await o.request({ type: 'send', room, body: 'after' });
    await eventually(async () => expect(await conversationWith(l, { room })).toMatchObject({ room, unread: 1, readUpTo: 3, deliveredUpTo: 3, muted: false }));
  });
});

describe('conversations', () => {
  it('unread is exact after interleaved sends and reads from several connections, and marks survive SvPersist restarting and Redis forgetting them', async () => {
    const [rita, sam] = [uid('rita'), uid('sam')];
    const r1 = await connect(rita, 0);
    const r2 = await connect(rita, 1);
    const s = await connect(sam, 1);
    const seqs: number[] = [];
    const send = async (n: number) => {
      for (let i = 0; i < n; i++) seqs.push((await s.request({ type: 'send', to: rita, body: `s${seqs.length}` })).seq as number);
    };
    await send(3);
    r1.send({ type: 'receipt', kind: 'read', with: sam, upTo: 2 });
    await send(2);
    await r1.request({ type: 'send', to: sam, body: 'reply' });
    r2.send({ type: 'receipt', kind: 'read', with: sam, upTo: 4 });
    // an older read from the first connection changes nothing
    r1.send({ type: 'receipt', kind: 'read', with: sam, upTo: 3 });
    await send(1);
    // 6 of sam's, one of rita's at 6: read up to 4, so 5 and 7 are unread
    await eventually(async () => expect(await conversationWith(r2, { with: sam })).toMatchObject({ with: sam, unread: 2, readUpTo: 4, deliveredUpTo: 4, last: expect.objectContaining({ from: sam, seq: 7 }) }));
    expect(await conversationWith(s, { with: rita })).toMatchObject({ unread: 1, peerReadUpTo: 4, peerDeliveredUpTo: 4 });

    // SvPersist restarts and Redis forgets the marks: they are still there, and a late, older
    // receipt cannot lower what storage holds
    await cluster.c.restartPersist();
    expect(await conversationWith(r2, { with: sam })).toMatchObject({ unread: 2, readUpTo: 4 });
    const redis = await createClient({ url: services().redisUrl }).connect();
    try {
      await redis.del(`${cluster.c.keyPrefix}marks:${conversationKey(directConversation(rita, sam))}`);
    } finally {
      await redis.quit();
    }
    r1.send({ type: 'receipt', kind: 'read', with: sam, upTo: 1 });
    r1.send({ type: 'receipt', kind: 'read', with: sam, upTo: 7 });
    await eventually(async () => expect(await conversationWith(r1, { with: sam })).toMatchObject({ unread: 0, readUpTo: 7 }));
  });

  it('unread is exact after SvPersist was down while messages were delivered live and read', async () => {
    const [tom, una] = [uid('tom'), uid('una')];
    const t = await connect(tom, 0);
    const u = await connect(una, 1);
    await t.request({ type: 'send', to: una, body: 'before' });
    await cluster.c.stopPersist();
    try {
      // acked by the broker and delivered live while storage is away; the reader reads two of three
      const acks = [];
      for (let i = 0; i < 3; i++) acks.push(await t.request({ type: 'send', to: una, body: `while down ${i}` }));
      for (const a of acks) await u.waitForMessage((m) => m.msgId === a.msgId);
      u.send({ type: 'receipt', kind: 'delivered', with: tom, upTo: acks[2]?.seq as number });
      u.send({ type: 'receipt', kind: 'read', with: tom, upTo: acks[1]?.seq as number });
      await t.waitFor((f) => f.type === 'receipt' && f.kind === 'read');
    } finally {
      await cluster.c.restartPersist();
    }
    // the queued messages and receipts are stored once SvPersist is back
    await eventually(async () => expect(await conversationWith(u, { with: tom })).toMatchObject({ unread: 1, readUpTo: 3, deliveredUpTo: 4, last: expect.objectContaining({ seq: 4 }) }), { timeoutMs: 20_000 });
  });

  it('mute is stored before it is answered and shows in conversations until it lapses or is undone; a room one is not in is forbidden', async () => {
    const [vic, wes, xan] = [uid('vic'), uid('wes'), uid('xan')];
    const v = await connect(vic, 0);
    await connect(wes, 1);
    await v.request({ type: 'send', to: wes, body: 'hi' });
    const room = (await v.request({ type: 'room.create', name: 'Quiet', members: [] })).room as string;
    await v.request({ type: 'send', room, body: 'hello room' });
    // a conversation is listed once its message is stored
    await eventually(async () => expect([await conversationWith(v, { with: wes }), await conversationWith(v, { room })]).toEqual([expect.anything(), expect.anything()]));
    const until = Date.now() + 3_600_000;
    expect(await v.request({ type: 'mute', id: 'mu-1', with: wes, until })).toEqual({ type: 'muted', id: 'mu-1', with: wes, until });
    expect(await v.request({ type: 'mute', id: 'mu-2', room, until: Date.now() - 1 })).toEqual({ type: 'muted', id: 'mu-2', room, until: expect.any(Number) });
    expect(await conversationWith(v, { with: wes })).toMatchObject({ muted: true });
    // a mute that already lapsed is no mute
    expect(await conversationWith(v, { room })).toMatchObject({ muted: false });
    expect(await v.request({ type: 'mute', id: 'mu-3', with: wes, until: 0 })).toEqual({ type: 'muted', id: 'mu-3', with: wes, until: 0 });
    expect(await conversationWith(v, { with: wes })).toMatchObject({ muted: false });
    const x = await connect(xan, 1);
    expect(await x.request({ type: 'mute', id: 'mu-4', room, until })).toMatchObject({ type: 'error', id: 'mu-4', code: 'forbidden' });
    expect(await x.request({ type: 'mute', id: 'mu-5', with: vic, until: -5 })).toMatchObject({ type: 'error', id: 'mu-5', code: 'bad_request' });
  });
});
