import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sequelize } from 'sequelize';
import { isolation } from '../../test/helpers';
import { createTestBroker, getJson, makeMessage, startService, uniqueTag, users as someUsers, withDb, INTERNAL_TOKEN } from './support';

/** n fresh user ids (tests take at most eight at a time) */
const users = (n: number) => someUsers(n) as [string, string, string, string, string, string, string, string];
import { createSequelize, type PersistService } from '../src/app';
import { createRooms, type RoomChange, type RoomResult, type Rooms, type RoomLimits } from '../src/rooms';
import { createIdFactory, roomConversation, type Envelope, type WireMessage } from '@simplechat/shared';

const iso = isolation();
let service: PersistService;
let baseUrl: string;
const pools: Sequelize[] = [];
const nextId = createIdFactory();

beforeAll(async () => {
  ({ service, baseUrl } = await startService({ databaseUrl: iso.databaseUrl, amqpUrl: iso.amqpUrl, queuePrefix: iso.queuePrefix }));
});

afterAll(async () => {
  await service?.close();
  await Promise.all(pools.map((p) => p.close()));
  const broker = await createTestBroker(iso.amqpUrl, iso.queuePrefix);
  await broker.deleteQueues();
  await broker.close();
});

/** Rooms with their own limits (and a pool of 10, so concurrent calls really overlap). */
function roomsWith(limits: Partial<RoomLimits>): Rooms {
  const sequelize = createSequelize(iso.databaseUrl, 10);
  pools.push(sequelize);
  return createRooms({ sequelize, newRoomId: () => `r_${nextId(Date.now())}`, limits: { maxRoomMembers: 1000, maxRoomsPerUser: 500, ...limits } });
}

function changed(r: RoomResult): RoomChange {
  if (!r.ok) throw new Error(`expected a change, got ${r.code}: ${r.message}`);
  return r;
}

async function postJson(path: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${baseUrl}${path}`, { method: 'POST', headers: { authorization: `Bearer ${INTERNAL_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

const q = (params: Record<string, string | number>) => new URLSearchParams(Object.entries(params).map(([k, v]): [string, string] => [k, String(v)])).toString();

function roomMessage(from: string, room: string, overrides: Partial<Envelope> = {}): Envelope {
  return makeMessage(from, from, { conversation: roomConversation(room), ...overrides });
}

const roomWire = (m: Envelope): WireMessage => ({ msgId: m.msgId, from: m.from, room: (m.conversation as { id: string }).id, body: m.body, ts: m.ts, seq: m.seq });

async function syncAll(user: string): Promise<WireMessage[]> {
  const out: WireMessage[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await service.store.sync({ user, after, limit: 2 });
    out.push(...page.messages);
    after = page.cursor;
    if (!page.more) return out;
  }
}

describe('create', () => {
  it('makes the creator owner and member, drops repeated ids, starts at version 1 and position 0', async () => {
    const [owner, b, c] = users(3);
    const r = await postJson('/internal/rooms', { name: 'Team ✨', owner, members: [c, b, owner, c] });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ ok: true, changed: true, position: 0, info: { name: 'Team ✨', owner, members: [owner, b, c].sort(), version: 1 } });
    expect(r.body.info.room).toMatch(/^r_[0-9A-HJKMNP-TV-Z]{26}$/);
    const got = await getJson(baseUrl, `/internal/rooms/${r.body.info.room}`);
    expect(got).toEqual({ status: 200, body: { ok: true, ...r.body.info, ended: false } });
    const rows = await withDb(iso.databaseUrl, (db) => db.query(`SELECT user_id, from_position::int AS f, to_position FROM room_members WHERE room_id = $1 ORDER BY user_id`, [r.body.info.room]));
    expect(rows.rows).toEqual([owner, b, c].sort().map((u) => ({ user_id: u, f: 0, to_position: null })));
  });

  it('never hands out a room id twice', async () => {
    const [owner] = users(1);
    const ids = await Promise.all(Array.from({ length: 5 }, async () => changed(await service.rooms.create({ name: 'x', owner, members: [] })).info.room));
    expect(new Set(ids).size).toBe(5);
  });

  it('checks the name: empty is bad_request, more than 100 code points too_large', async () => {
    const [owner] = users(1);
    expect(await service.rooms.create({ name: '', owner, members: [] })).toEqual({ ok: false, code: 'bad_request', message: 'the room name is empty; give 1-100 characters' });
    expect(await service.rooms.create({ name: 'x'.repeat(101), owner, members: [] })).toMatchObject({ ok: false, code: 'too_large' });
    expect(changed(await service.rooms.create({ name: '😀'.repeat(100), owner, members: [] })).info.name).toBe('😀'.repeat(100));
  });

  it('refuses more than MAX_ROOM_MEMBERS members, counting the owner', async () => {
    const rooms = roomsWith({ maxRoomMembers: 3 });
    const [owner, a, b, c] = users(4);
    expect(await rooms.create({ name: 'x', owner, members: [a, b, c] })).toEqual({
      ok: false,
      code: 'too_large',
      message: 'a room may have 3 members (MAX_ROOM_MEMBERS 3) and 4 were given; create it with fewer',
    });
    expect(changed(await rooms.create({ name: 'x', owner, members: [a, b, a] })).info.members).toHaveLength(3);
  });

  it('refuses a member already in MAX_ROOMS_PER_USER rooms, naming that user', async () => {
    const rooms = roomsWith({ maxRoomsPerUser: 2 });
    const [owner, busy, free] = users(3);
    changed(await rooms.create({ name: 'one', owner: busy, members: [] }));
    changed(await rooms.create({ name: 'two', owner: busy, members: [] }));
    expect(await rooms.create({ name: 'three', owner, members: [free, busy] })).toEqual({
      ok: false,
      code: 'too_large',
      message: `user ${busy} is in 2 rooms (MAX_ROOMS_PER_USER 2); it must leave a room before joining another`,
    });
    expect((await rooms.listForUser(owner)).rooms).toEqual([]);
  });
});

describe('add and remove', () => {
  it('are for the owner only (or the server API), and answer forbidden to others', async () => {
    const [owner, member, dave] = users(3);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [member] })).info.room;
    expect(await service.rooms.add({ room, userId: dave, by: member, position: 0 })).toEqual({ ok: false, code: 'forbidden', message: `only the owner of room ${room} may add members; ask its owner` });
    expect(await service.rooms.remove({ room, userId: owner, by: member, position: 0 })).toMatchObject({ ok: false, code: 'forbidden' });

    const added = changed(await service.rooms.add({ room, userId: dave, by: owner, position: 7 }));
    expect(added).toEqual({ ok: true, changed: true, position: 7, info: { room, name: 'x', owner, members: [owner, member].sort().concat(dave), version: 2 } });
    const removed = changed(await service.rooms.remove({ room, userId: member, by: null, position: 9 }));
    expect(removed).toEqual({ ok: true, changed: true, position: 9, info: { room, name: 'x', owner, members: [owner, dave], version: 3 } });
  });

  it('adding a member twice or removing a non-member changes nothing, version included', async () => {
    const [owner, member, stranger] = users(3);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [member] })).info.room;
    const again = changed(await service.rooms.add({ room, userId: member, by: owner, position: 3 }));
    expect(again).toMatchObject({ changed: false, info: { version: 1, members: [owner, member].sort() } });
    const none = changed(await service.rooms.remove({ room, userId: stranger, by: owner, position: 3 }));
    expect(none).toMatchObject({ changed: false, info: { version: 1 } });
    const intervals = await withDb(iso.databaseUrl, (db) => db.query(`SELECT count(*)::int AS n FROM room_members WHERE room_id = $1`, [room]));
    expect(intervals.rows[0].n).toBe(2);
  });

  it('the owner removing itself gets bad_request: it leaves instead', async () => {
    const [owner, member] = users(2);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [member] })).info.room;
    expect(await service.rooms.remove({ room, userId: owner, by: owner, position: 0 })).toEqual({ ok: false, code: 'bad_request', message: `the owner cannot remove itself from room ${room}; leave the room instead` });
    expect((await service.rooms.get(room))).toMatchObject({ owner, members: [owner, member].sort(), version: 1 });
  });

  it('a null position takes the highest position storage handed out in the room (0 before any)', async () => {
    const [owner, a, b] = users(3);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [] })).info.room;
    expect(changed(await service.rooms.add({ room, userId: a, by: null, position: null })).position).toBe(0);
    await service.store.reservePositions(room, 12);
    expect(changed(await service.rooms.add({ room, userId: b, by: owner, position: null })).position).toBe(12);
    expect(changed(await service.rooms.remove({ room, userId: a, by: owner, position: null })).position).toBe(12);
    const rows = await withDb(iso.databaseUrl, (db) => db.query(`SELECT user_id, from_position::int AS f, to_position::int AS t FROM room_members WHERE room_id = $1 AND user_id <> $2 ORDER BY user_id`, [room, owner]));
    expect(rows.rows).toEqual([{ user_id: a, f: 0, t: 12 }, { user_id: b, f: 12, t: null }].sort((x, y) => (x.user_id < y.user_id ? -1 : 1)));
  });

  it('refuses an add past MAX_ROOM_MEMBERS or past the user\'s MAX_ROOMS_PER_USER', async () => {
    const rooms = roomsWith({ maxRoomMembers: 2, maxRoomsPerUser: 1 });
    const [owner, a, b, other] = users(4);
    const room = changed(await rooms.create({ name: 'x', owner, members: [a] })).info.room;
    expect(await rooms.add({ room, userId: b, by: owner, position: 0 })).toEqual({
      ok: false,
      code: 'too_large',
      message: `room ${room} has 2 members (MAX_ROOM_MEMBERS 2); remove a member before adding another`,
    });
    const second = changed(await rooms.create({ name: 'y', owner: other, members: [] })).info.room;
    expect(await rooms.add({ room: second, userId: a, by: other, position: 0 })).toMatchObject({ ok: false, code: 'too_large', message: `user ${a} is in 1 rooms (MAX_ROOMS_PER_USER 1); it must leave a room before joining another` });
  });

  it('concurrent adds never pass MAX_ROOM_MEMBERS', async () => {
    const rooms = roomsWith({ maxRoomMembers: 5 });
    const [owner, ...others] = users(21);
    const room = changed(await rooms.create({ name: 'x', owner, members: [] })).info.room;
    const results = await Promise.all(others.map((userId) => rooms.add({ room, userId, by: owner, position: 0 })));
    expect(results.filter((r) => r.ok && r.changed)).toHaveLength(4);
    expect(results.filter((r) => !r.ok && r.code === 'too_large')).toHaveLength(16);
    const info = await rooms.get(room);
    expect(info.ok && info.members).toHaveLength(5);
    expect(info.ok && info.version).toBe(5);
  });

  it('concurrent adds of one user to many rooms never pass MAX_ROOMS_PER_USER', async () => {
    const rooms = roomsWith({ maxRoomsPerUser: 3 });
    const [user, ...owners] = users(11);
    const ids = await Promise.all(owners.map(async (owner) => changed(await rooms.create({ name: 'x', owner, members: [] })).info.room));
    const results = await Promise.all(ids.map((room, i) => rooms.add({ room, userId: user, by: owners[i] as string, position: 0 })));
    expect(results.filter((r) => r.ok)).toHaveLength(3);
    expect((await rooms.listForUser(user)).rooms).toHaveLength(3);
  });
});

describe('leave', () => {
  it('is for members only', async () => {
    const [owner, stranger] = users(2);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [] })).info.room;
    expect(await service.rooms.leave({ room, userId: stranger, position: 0 })).toEqual({ ok: false, code: 'forbidden', message: `user ${stranger} is not a member of room ${room}; only members can leave it` });
  });

  it('a member leaving keeps the owner; an owner leaving hands the room to the member who joined earliest', async () => {
    const tag = uniqueTag();
    const [owner, zed, amy, bob] = [`o-${tag}`, `z-${tag}`, `a-${tag}`, `b-${tag}`];
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [zed, bob] })).info.room;
    changed(await service.rooms.add({ room, userId: amy, by: owner, position: 0 })); // joined later, smallest id
    const left = changed(await service.rooms.leave({ room, userId: bob, position: 0 }));
    expect(left).toEqual({ ok: true, changed: true, position: 0, info: { room, name: 'x', owner, members: [owner, zed, amy], version: 3 } });
    expect(left.newOwner).toBeUndefined();

    const handed = changed(await service.rooms.leave({ room, userId: owner, position: 0 }));
    expect(handed).toEqual({ ok: true, changed: true, position: 0, newOwner: zed, info: { room, name: 'x', owner: zed, members: [zed, amy], version: 4 } });
    expect(await service.rooms.get(room)).toMatchObject({ owner: zed });
  });

  it('ties between members who joined together go to the smallest user id', async () => {
    const tag = uniqueTag();
    const [owner, c, b] = [`o-${tag}`, `c-${tag}`, `b-${tag}`];
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [c, b] })).info.room;
    expect(changed(await service.rooms.leave({ room, userId: owner, position: null })).newOwner).toBe(b);
  });

  it('the last member leaving ends the room: get says ended, changes answer not_found, the messages stay', async () => {
    const [owner, member] = users(2);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [member] })).info.room;
    const m = roomMessage(owner, room);
    await service.store.insertBatch([m]);
    changed(await service.rooms.leave({ room, userId: owner, position: 1 }));
    const last = changed(await service.rooms.leave({ room, userId: member, position: 1 }));
    expect(last).toEqual({ ok: true, changed: true, ended: true, position: 1, info: { room, name: 'x', owner: null, members: [], version: 3 } });

    expect(await service.rooms.get(room)).toEqual({ ok: true, room, name: 'x', owner: null, members: [], version: 3, ended: true });
    const gone = { ok: false, code: 'not_found', message: `room ${room} has ended (its last member left); create a new room` };
    expect(await service.rooms.add({ room, userId: member, by: null, position: null })).toEqual(gone);
    expect(await service.rooms.remove({ room, userId: member, by: null, position: null })).toEqual(gone);
    expect(await service.rooms.leave({ room, userId: member, position: null })).toEqual(gone);
    expect(await service.rooms.isMember(room, member)).toBe(false);
    expect((await service.rooms.listForUser(member)).rooms).toEqual([]);
    const stored = await withDb(iso.databaseUrl, (db) => db.query(`SELECT id FROM messages WHERE room_id = $1`, [room]));
    expect(stored.rows.map((r) => r.id)).toEqual([m.msgId]);
    // a former member keeps the messages of its time in the room
    expect((await syncAll(member)).map((w) => w.msgId)).toEqual([m.msgId]);
  });
});

describe('get and list', () => {
  it('get answers not_found for no such room', async () => {
    const room = `r_${nextId(Date.now())}`;
    expect(await getJson(baseUrl, `/internal/rooms/${room}`)).toEqual({ status: 200, body: { ok: false, code: 'not_found', message: `room ${room} does not exist; check the room id` } });
  });

  it("lists a user's current rooms by id, paged with after and limit, with member counts and no member lists", async () => {
    const [me, other] = users(2);
    const made: { room: string; name: string }[] = [];
    for (let i = 0; i < 5; i++) {
      const info = changed(await service.rooms.create({ name: `room ${i}`, owner: other, members: i === 1 ? [me] : [me, `x${i}-${uniqueTag()}`] })).info;
      made.push({ room: info.room, name: info.name });
    }
    changed(await service.rooms.leave({ room: (made[2] as { room: string }).room, userId: me, position: null }));
    const expected = made
      .filter((_, i) => i !== 2)
      .map((m, i) => ({ room: m.room, name: m.name, owner: other, memberCount: i === 1 ? 2 : 3 }))
      .sort((a, b) => (a.room < b.room ? -1 : 1));

    const p1 = await getJson(baseUrl, `/internal/users/${me}/rooms?${q({ limit: 3 })}`);
    expect(p1).toEqual({ status: 200, body: { rooms: expected.slice(0, 3), more: true } });
    const p2 = await getJson(baseUrl, `/internal/users/${me}/rooms?${q({ limit: 3, after: p1.body.rooms[2].room })}`);
    expect(p2).toEqual({ status: 200, body: { rooms: expected.slice(3), more: false } });
    expect(await getJson(baseUrl, `/internal/users/${me}/rooms`)).toEqual({ status: 200, body: { rooms: expected, more: false } });
  });

  it('answers 200 rooms per page by default when a user has more', async () => {
    const [me] = users(1);
    const rooms = roomsWith({});
    for (let i = 0; i < 201; i++) changed(await rooms.create({ name: `r${i}`, owner: me, members: [] }));
    const p1 = await getJson(baseUrl, `/internal/users/${me}/rooms`);
    expect(p1.body.rooms).toHaveLength(200);
    expect(p1.body.more).toBe(true);
    const p2 = await getJson(baseUrl, `/internal/users/${me}/rooms?${q({ after: p1.body.rooms[199].room })}`);
    expect(p2.body).toMatchObject({ more: false });
    expect(p2.body.rooms).toHaveLength(1);
  });
});

describe('room messages', () => {
  it('are stored as one row with room_id, no recipient, the room as conversation and the message position', async () => {
    const [owner, a, b] = users(3);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [a, b] })).info.room;
    const m = roomMessage(a, room);
    const unnumbered = roomMessage(b, room, { seq: 0 });
    const direct = makeMessage(a, b);
    await service.store.reservePositions(room, 1); // m's, as a gateway takes it
    expect(await service.store.insertBatch([m, direct, unnumbered])).toBe(3);
    const rows = await withDb(iso.databaseUrl, (db) =>
      db.query(`SELECT id, sender, recipient, room_id, conversation_id, position::int AS position FROM messages WHERE id = ANY($1) ORDER BY seq`, [[m.msgId, direct.msgId, unnumbered.msgId]]),
    );
    expect(rows.rows).toEqual([
      { id: m.msgId, sender: a, recipient: null, room_id: room, conversation_id: room, position: 1 },
      { id: direct.msgId, sender: a, recipient: b, room_id: null, conversation_id: [a, b].sort().join(':'), position: 1 },
      { id: unnumbered.msgId, sender: b, recipient: null, room_id: room, conversation_id: room, position: 2 },
    ]);
    // a redelivered batch stores nothing twice
    expect(await service.store.insertBatch([m, unnumbered])).toBe(0);
  });

  it('history pages the room for current members, and is forbidden to others', async () => {
    const [owner, member, stranger] = users(3);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [member] })).info.room;
    const ms = Array.from({ length: 5 }, (_, i) => roomMessage(i % 2 ? owner : member, room, { body: `m${i}` }));
    for (const m of [...ms].reverse()) await service.store.insertBatch([m]);

    const p1 = await getJson(baseUrl, `/internal/history?${q({ user: member, room, limit: 3 })}`);
    expect(p1).toEqual({ status: 200, body: { ok: true, messages: ms.slice(2).map(roomWire), more: true } });
    const p2 = await getJson(baseUrl, `/internal/history?${q({ user: owner, room, limit: 3, before: p1.body.messages[0].msgId })}`);
    expect(p2.body).toEqual({ ok: true, messages: ms.slice(0, 2).map(roomWire), more: false });

    expect(await getJson(baseUrl, `/internal/history?${q({ user: stranger, room })}`)).toEqual({
      status: 200,
      body: { ok: false, code: 'forbidden', message: `user ${stranger} is not a member of room ${room}; only current members read its history` },
    });
    changed(await service.rooms.remove({ room, userId: member, by: owner, position: 5 }));
    expect((await getJson(baseUrl, `/internal/history?${q({ user: member, room })}`)).body).toMatchObject({ ok: false, code: 'forbidden' });
    const missing = `r_${nextId(Date.now())}`;
    expect((await getJson(baseUrl, `/internal/history?${q({ user: owner, room: missing })}`)).body).toMatchObject({ ok: false, code: 'not_found' });
  });

  it('sync returns room messages inside each membership interval: a late joiner from its join, a removed member up to its removal', async () => {
    const [alice, bob, carol] = users(3);
    const room = changed(await service.rooms.create({ name: 'x', owner: alice, members: [bob] })).info.room;
    const m1 = roomMessage(alice, room);
    const m2 = roomMessage(bob, room);
    await service.store.insertBatch([m1]);
    await service.store.insertBatch([m2]);
    changed(await service.rooms.add({ room, userId: carol, by: alice, position: 2 }));
    const m3 = roomMessage(carol, room); // position 3: accepted before bob's removal...
    changed(await service.rooms.remove({ room, userId: bob, by: alice, position: 3 }));
    const m4 = roomMessage(alice, room); // position 4: after it
    await service.store.insertBatch([m4]);
    await service.store.insertBatch([m3]); // ...and stored after m4
    const direct = makeMessage(carol, bob);
    await service.store.insertBatch([direct]);
    changed(await service.rooms.add({ room, userId: bob, by: alice, position: 4 }));
    const m5 = roomMessage(carol, room);
    await service.store.insertBatch([m5]);

    expect(await syncAll(alice)).toEqual([m1, m2, m4, m3, m5].map(roomWire));
    expect(await syncAll(carol)).toEqual([...[m4, m3].map(roomWire), { msgId: direct.msgId, from: carol, to: bob, body: direct.body, ts: direct.ts, seq: direct.seq }, roomWire(m5)]);
    expect((await syncAll(bob)).map((w) => w.msgId)).toEqual([m1.msgId, m2.msgId, m3.msgId, direct.msgId, m5.msgId]);
  });

  it('a rejoin never starts before the end of the last interval, so sync returns no message twice', async () => {
    const [owner, user] = users(2);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [user] })).info.room;
    changed(await service.rooms.remove({ room, userId: user, by: owner, position: 2 }));
    // a stale position from the gateway
    expect(changed(await service.rooms.add({ room, userId: user, by: owner, position: 1 })).position).toBe(2);
    const ms = [roomMessage(owner, room), roomMessage(owner, room), roomMessage(owner, room)];
    await service.store.insertBatch(ms);
    expect((await syncAll(user)).map((w) => w.msgId)).toEqual(ms.map((m) => m.msgId));
  });

  it('sync never skips a room message stored after a cursor was handed out', async () => {
    const [owner, member] = users(2);
    const room = changed(await service.rooms.create({ name: 'x', owner, members: [member] })).info.room;
    const first = roomMessage(owner, room);
    await service.store.insertBatch([first]);
    const page = await service.store.sync({ user: member, after: (await service.store.cursor()).cursor, limit: 10 });
    expect(page.messages).toEqual([]);
    const later = roomMessage(owner, room);
    await service.store.insertBatch([later]);
    expect((await service.store.sync({ user: member, after: page.cursor, limit: 10 })).messages).toEqual([roomWire(later)]);
  });
});

describe('internal rooms API', () => {
  it('answers changes through HTTP with the result union, refusals included, as 200', async () => {
    const [owner, member, dave] = users(3);
    const created = await postJson('/internal/rooms', { name: 'x', owner, members: [member] });
    const room = created.body.info.room as string;
    expect(await postJson(`/internal/rooms/${room}/members`, { userId: dave, by: member, position: null })).toMatchObject({ status: 200, body: { ok: false, code: 'forbidden' } });
    expect(await postJson(`/internal/rooms/${room}/members`, { userId: dave, by: owner, position: 0 })).toMatchObject({ status: 200, body: { ok: true, changed: true, info: { version: 2 } } });
    expect(await postJson(`/internal/rooms/${room}/remove`, { userId: dave, by: null, position: null })).toMatchObject({ status: 200, body: { ok: true, changed: true, info: { version: 3 } } });
    expect(await postJson(`/internal/rooms/${room}/leave`, { userId: owner, position: 0 })).toMatchObject({ status: 200, body: { ok: true, newOwner: member, info: { owner: member } } });
    expect(await postJson(`/internal/rooms/r_nothing/leave`, { userId: owner, position: 0 })).toMatchObject({ status: 200, body: { ok: false, code: 'not_found' } });
  });

  it.each([
    ['/internal/rooms', { name: 'x', owner: 'a b', members: [] }],
    ['/internal/rooms', { name: 'x', owner: 'a' }],
    ['/internal/rooms/r_1/members', { userId: 'a', position: 0 }],
    ['/internal/rooms/r_1/members', { userId: 'a', by: null, position: -1 }],
    ['/internal/rooms/r_1/remove', { userId: 'a', by: null }],
    ['/internal/rooms/r:1/leave', { userId: 'a', position: 0 }],
    ['/internal/rooms/r_1/leave', { position: 0 }],
  ])('answers 400 to a malformed POST %s %j', async (path, body) => {
    const r = await postJson(path, body);
    expect(r.status).toBe(400);
    expect(r.body.error).toMatch(/^bad request: /);
  });

  it.each(['/internal/history?user=a&with=b&room=r_1', '/internal/history?user=a&room=r%3A1', '/internal/users/a%20b/rooms', '/internal/users/a/rooms?limit=201', '/internal/rooms/r%3A1'])(
    'answers 400 to %s',
    async (path) => {
      const r = await getJson(baseUrl, path);
      expect(r.status).toBe(400);
    },
  );
});
