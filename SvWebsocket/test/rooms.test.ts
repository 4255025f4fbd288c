/**
 * Rooms (PROTOCOL.md v1.1 "Rooms") on a two-instance cluster with the real
 * services: membership, events, fan-out across instances, changes that take
 * effect everywhere before they are answered, membership intervals in sync,
 * idempotency, limits and errors.
 */
import { describe, it, expect } from 'vitest';
import type { ProtocolSocket, WireMessage } from '@simplechat/shared';
import { clusterPerFile, uid } from '../../test/cluster';
import { eventually } from '../../test/helpers';
import { sample } from '../../test/metrics';

const cluster = clusterPerFile({ wsCount: 2 });
const connect = (user: string, i = 0) => cluster.connect(user, i);
type Frame = Awaited<ReturnType<ProtocolSocket['request']>>;
const roomMessages = (s: ProtocolSocket, room: string) => s.messages().filter((m) => m.room === room);
/**
 * A direct message from `from` to `to`, awaited on `toSocket`: it travels the same path (the same
 * peer link, in order) as anything sent before it, so what has not arrived by then is not coming.
 */
async function flushed(from: ProtocolSocket, to: string, toSocket: ProtocolSocket): Promise<void> {
  const marker = await from.request({ type: 'send', to, body: 'marker' });
  await toSocket.waitForMessage((m) => m.msgId === marker.msgId);
}

async function createRoom(owner: ProtocolSocket, name: string, members: string[]): Promise<Frame> {
  const info = await owner.request({ type: 'room.create', name, members });
  expect(info.type).toBe('room.info');
  return info;
}

describe('rooms', () => {
  it('room.create answers room.info with the creator as owner and member, and each member gets one created event', async () => {
    const [alice, bob, carol] = [uid('alice'), uid('bob'), uid('carol')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const info = await createRoom(a, 'Team', [bob, carol, bob]);
    expect(info).toMatchObject({ name: 'Team', owner: alice, members: [alice, bob, carol] });
    expect(info.room).toMatch(/^r_[0-9A-HJKMNP-TV-Z]{26}$/);
    const event = await b.waitFor((f) => f.type === 'room.event' && f.room === info.room);
    expect(event).toMatchObject({ event: 'created', userId: alice, by: alice });
    expect(typeof event.ts).toBe('number');
    await flushed(a, bob, b);
    expect(b.frames.filter((f) => f.type === 'room.event' && f.room === info.room)).toHaveLength(1);
  });

  it('a room message reaches every connection of every member on both instances once, except the sending connection, and is stored as one row', async () => {
    const [alice, bob, carol] = [uid('alice'), uid('bob'), uid('carol')];
    const a1 = await connect(alice, 0);
    const a2 = await connect(alice, 1);
    const b = await connect(bob, 1);
    const cc = await connect(carol, 0);
    const info = await createRoom(a1, 'Spread', [bob, carol]);
    const room = info.room as string;
    const ack = await a1.request({ type: 'send', id: 'm1', room, body: 'hello room' });
    expect(ack).toMatchObject({ type: 'ack', id: 'm1', seq: 1 });
    for (const s of [a2, b, cc]) {
      const m = await s.waitForMessage((x) => x.msgId === ack.msgId);
      expect(m).toMatchObject({ from: alice, room, body: 'hello room', ts: ack.ts, seq: 1 });
      expect(m).not.toHaveProperty('to');
    }
    // the sending connection was skipped before its ack; the others got nothing more after the message
    await Promise.all([flushed(a1, alice, a2), flushed(a1, bob, b), flushed(a1, carol, cc)]);
    expect(roomMessages(a1, room)).toHaveLength(0);
    for (const s of [a2, b, cc]) expect(roomMessages(s, room)).toHaveLength(1);
    const rows = await eventually(async () => {
      const r = (await cluster.c.db.query('SELECT room_id, recipient, conversation_id, position::int AS position FROM messages WHERE id = $1', [ack.msgId])).rows;
      expect(r).toHaveLength(1);
      return r;
    });
    expect(rows[0]).toEqual({ room_id: room, recipient: null, conversation_id: room, position: 1 });
  });

  it('a resend to a room stores and delivers once, at one position', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice, 0);
    const a2 = await connect(alice, 1);
    const b = await connect(bob, 1);
    const room = (await createRoom(a, 'Again', [bob])).room as string;
    const first = await a.request({ type: 'send', id: 'same', room, body: 'once' });
    const again = await a2.request({ type: 'send', id: 'same', room, body: 'once' });
    expect(again).toMatchObject({ msgId: first.msgId, seq: first.seq });
    const next = await a.request({ type: 'send', id: 'next', room, body: 'twice' });
    expect(next.seq).toBe((first.seq as number) + 1);
    await eventually(async () => {
      const r = (await cluster.c.db.query('SELECT id FROM messages WHERE room_id = $1', [room])).rows;
      expect(r).toHaveLength(2);
    });
    await b.waitForMessage((m) => m.msgId === next.msgId);
    // clients show each msgId once: live twice is allowed, stored once is required
    expect(new Set(roomMessages(b, room).map((m) => m.msgId)).size).toBe(2);
  });

  it('a removal takes effect on the other instance before it is answered, and the removed member keeps only its time in sync', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const room = (await createRoom(a, 'Remove', [bob])).room as string;
    const before = await a.request({ type: 'send', id: 'r1', room, body: 'while a member' });
    await b.waitForMessage((m) => m.msgId === before.msgId);
    const removed = await a.request({ type: 'room.remove', room, userId: bob });
    expect(removed).toMatchObject({ type: 'room.info', members: [alice] });
    await b.waitFor((f) => f.type === 'room.event' && f.room === room && f.event === 'removed');
    const after = await a.request({ type: 'send', id: 'r2', room, body: 'after removal' });
    expect(after.type).toBe('ack');
    await flushed(a, bob, b);
    expect(roomMessages(b, room).map((m) => m.msgId)).toEqual([before.msgId]);
    await eventually(async () => {
      const r = (await cluster.c.db.query('SELECT id FROM messages WHERE id = $1', [after.msgId])).rows;
      expect(r).toHaveLength(1);
    });
    const synced = (await b.request({ type: 'sync' })).messages as WireMessage[];
    expect(synced.filter((m) => m.room === room).map((m) => m.msgId)).toEqual([before.msgId]);
    expect(await b.request({ type: 'send', id: 'r3', room, body: 'let me in' })).toMatchObject({ type: 'error', code: 'forbidden', id: 'r3' });
    expect(await b.request({ type: 'history', room })).toMatchObject({ type: 'error', code: 'forbidden' });
  });

  it('a member added later gets messages from then on, live on the other instance and in sync from its joining only', async () => {
    const [alice, bob, dave] = [uid('alice'), uid('bob'), uid('dave')];
    const a = await connect(alice, 0);
    const room = (await createRoom(a, 'Later', [bob])).room as string;
    const early = await a.request({ type: 'send', id: 'e1', room, body: 'before dave' });
    const d = await connect(dave, 1);
    const added = await a.request({ type: 'room.add', room, userId: dave });
    expect(added).toMatchObject({ type: 'room.info', members: [alice, bob, dave] });
    const event = await d.waitFor((f) => f.type === 'room.event' && f.room === room);
    expect(event).toMatchObject({ event: 'added', userId: dave, by: alice });
    const late = await a.request({ type: 'send', id: 'e2', room, body: 'after dave' });
    await d.waitForMessage((m) => m.msgId === late.msgId);
    await eventually(async () => {
      const synced = (await d.request({ type: 'sync' })).messages as WireMessage[];
      expect(synced.filter((m) => m.room === room).map((m) => m.msgId)).toEqual([late.msgId]);
    });
    // history pages the whole room for current members
    const history = await d.request({ type: 'history', room });
    expect((history.messages as WireMessage[]).map((m) => m.msgId)).toEqual([early.msgId, late.msgId]);
    expect(history).toMatchObject({ type: 'history', room, more: false });
  });

  it('only the owner adds and removes; adding twice and removing a non-member change nothing; the owner cannot remove itself', async () => {
    const [alice, bob, erin] = [uid('alice'), uid('bob'), uid('erin')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const room = (await createRoom(a, 'Owner', [bob])).room as string;
    expect(await b.request({ type: 'room.add', id: 'x1', room, userId: erin })).toMatchObject({ type: 'error', code: 'forbidden', id: 'x1' });
    expect(await b.request({ type: 'room.remove', id: 'x2', room, userId: alice })).toMatchObject({ type: 'error', code: 'forbidden', id: 'x2' });
    expect(await a.request({ type: 'room.add', room, userId: bob })).toMatchObject({ type: 'room.info', members: [alice, bob] });
    expect(await a.request({ type: 'room.remove', room, userId: erin })).toMatchObject({ type: 'room.info', members: [alice, bob] });
    expect(await a.request({ type: 'room.remove', id: 'x3', room, userId: alice })).toMatchObject({ type: 'error', code: 'bad_request', id: 'x3' });
  });

  it('an owner who leaves hands the room to the earliest member; the last one to leave ends it', async () => {
    const [alice, bob, carol] = [uid('alice'), uid('bob'), uid('carol')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const cc = await connect(carol, 0);
    const room = (await createRoom(a, 'Leave', [bob, carol])).room as string;
    expect(await a.request({ type: 'room.leave', id: 'l1', room })).toEqual({ type: 'room.left', id: 'l1', room });
    const owner = await b.waitFor((f) => f.type === 'room.event' && f.room === room && f.event === 'owner');
    expect(owner.userId).toBe([bob, carol].sort()[0]);
    expect(await b.request({ type: 'room.get', room })).toMatchObject({ owner: [bob, carol].sort()[0], members: expect.arrayContaining([bob, carol]) });
    expect(await a.request({ type: 'room.get', id: 'g1', room })).toMatchObject({ type: 'error', code: 'forbidden', id: 'g1' });
    await b.request({ type: 'room.leave', room });
    await cc.request({ type: 'room.leave', room });
    expect(await cc.request({ type: 'send', id: 'gone', room, body: 'anyone?' })).toMatchObject({ type: 'error', code: 'not_found', id: 'gone' });
    expect(await cc.request({ type: 'room.get', id: 'g2', room })).toMatchObject({ type: 'error', code: 'not_found', id: 'g2' });
  });

  it('answers bad input as the contract says, each answer with the request id', async () => {
    const alice = uid('alice');
    const a = await connect(alice, 0);
    expect(await a.request({ type: 'room.create', id: 'b1', name: '', members: [] })).toMatchObject({ type: 'error', code: 'bad_request', id: 'b1' });
    const long = await a.request({ type: 'room.create', id: 'b2', name: 'n'.repeat(101), members: [] });
    expect(long).toMatchObject({ type: 'error', code: 'too_large', id: 'b2' });
    expect(long.message).toMatch(/100/);
    const many = await a.request({ type: 'room.create', id: 'b3', name: 'Crowd', members: Array.from({ length: 201 }, (_, i) => `u${i}`) });
    expect(many).toMatchObject({ type: 'error', code: 'too_large', id: 'b3' });
    expect(many.message).toMatch(/200/);
    expect(await a.request({ type: 'send', id: 'b4', room: 'r_01JD6Q5Z3W4X8Y9ZABCDEFGHJK', body: 'hi' })).toMatchObject({ type: 'error', code: 'not_found', id: 'b4' });
    expect(await a.request({ type: 'room.get', id: 'b5', room: 'r_01JD6Q5Z3W4X8Y9ZABCDEFGHJK' })).toMatchObject({ type: 'error', code: 'not_found', id: 'b5' });
    expect(await a.request({ type: 'send', id: 'b6', to: alice, room: 'r_01JD6Q5Z3W4X8Y9ZABCDEFGHJK', body: 'both' })).toMatchObject({ type: 'error', code: 'bad_request', id: 'b6' });
  });

  it('room.list pages the caller rooms by id without member lists', async () => {
    const alice = uid('alice');
    const a = await connect(alice, 0);
    const made = [];
    for (let i = 0; i < 3; i++) made.push((await createRoom(a, `List ${i}`, [])).room as string);
    const page = await a.request({ type: 'room.list', id: 'p1' });
    expect(page).toMatchObject({ type: 'rooms', id: 'p1', more: false });
    expect((page.rooms as { room: string }[]).map((r) => r.room)).toEqual([...made].sort());
    expect((page.rooms as Record<string, unknown>[])[0]).toEqual({ room: [...made].sort()[0], name: expect.any(String), owner: alice, memberCount: 1 });
    const after = await a.request({ type: 'room.list', after: [...made].sort()[0] });
    expect((after.rooms as { room: string }[]).map((r) => r.room)).toEqual([...made].sort().slice(1));
  });

  it('at steady state a room message costs no discovery lookup and one forward to the other instance', async () => {
    const members = Array.from({ length: 6 }, (_, i) => uid(`m${i}`));
    const socks = await Promise.all(members.map((u, i) => connect(u, i % 2)));
    const rest = members.slice(1);
    const room = (await createRoom(socks[0] as ProtocolSocket, 'Steady', rest)).room as string;
    const warm = await (socks[0] as ProtocolSocket).request({ type: 'send', room, body: 'warm up' });
    await (socks[1] as ProtocolSocket).waitForMessage((m) => m.msgId === warm.msgId);
    const ws = cluster.c.ws[0];
    if (!ws) throw new Error('no instance');
    const read = async () => {
      const text = await ws.metrics.render();
      return { requests: sample(text, 'simplechat_discovery_requests_total') ?? 0, forwards: sample(text, 'simplechat_forward_frames_total') ?? 0 };
    };
    const before = await read();
    const acks: Frame[] = [];
    for (let i = 0; i < 10; i++) acks.push(await (socks[0] as ProtocolSocket).request({ type: 'send', room, body: `steady ${i}` }));
    for (const s of socks.slice(1)) await s.waitForMessage((m) => m.msgId === acks[9]?.msgId);
    const after = await read();
    expect(after.requests - before.requests).toBe(0);
    // one frame to the other instance per message, carrying its three members there
    expect(after.forwards - before.forwards).toBe(10);
  });
});
