/**
 * The conversation list and marks against the real Postgres: unread counts
 * stored messages of others above the read mark, exactly, whatever order
 * messages were stored in, across empty positions and membership intervals;
 * marks only grow; paging by `before` skips nothing.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { conversationKey, createLogger, directConversation, roomConversation, type Receipt } from '@simplechat/shared';
import { createConversations, type Conversations } from '../src/conversations';
import { createEmptyPositions } from '../src/empty-positions';
import { makeMessage, ownDatabase, uniqueTag, users } from './support';

// A database of this file's own: the empty-position scan covers every conversation.
const db = ownDatabase('conv');
let conversations: Conversations;
beforeAll(() => {
  conversations = createConversations({ sequelize: db.sequelize });
});

const mark = (user: string, conversation: Receipt['conversation'], kind: Receipt['kind'], upTo: number): Receipt => ({ user, conversation, kind, upTo, ts: Date.now() });
async function listOf(user: string) {
  return (await conversations.list(user, undefined)).conversations;
}

async function addRoom(room: string, owner: string, members: { user: string; from: number; to?: number }[]): Promise<void> {
  await db.sequelize.query(`INSERT INTO rooms (id, name, owner, version) VALUES ($1, 'x', $2, 1)`, { bind: [room, owner] });
  for (const m of members) await db.sequelize.query(`INSERT INTO room_members (room_id, user_id, joined_at, from_position, to_position) VALUES ($1, $2, now(), $3, $4)`, { bind: [room, m.user, m.from, m.to ?? null] });
}

describe('conversations', () => {
  it('lists direct conversations from either side with the last message, both sides\' marks and exact unread', async () => {
    const [a, b] = users(2) as [string, string];
    const c = directConversation(a, b);
    await db.store.reservePositions(conversationKey(c), 100);
    const ms = [makeMessage(b, a, { seq: 1 }), makeMessage(a, b, { seq: 2 }), makeMessage(b, a, { seq: 3 }), makeMessage(b, a, { seq: 4 })];
    await db.store.insertBatch(ms);
    expect(await listOf(a)).toEqual([{ with: b, last: expect.objectContaining({ msgId: ms[3]?.msgId, seq: 4, from: b, to: a }), unread: 3, readUpTo: 0, deliveredUpTo: 0, peerReadUpTo: 0, peerDeliveredUpTo: 0, muted: false }]);
    // b's own messages are not unread for b; a's one is
    expect((await listOf(b))[0]).toMatchObject({ with: a, unread: 1 });

    await db.store.applyMarks([mark(a, c, 'delivered', 4), mark(a, c, 'read', 3), mark(b, c, 'read', 2)]);
    expect((await listOf(a))[0]).toMatchObject({ unread: 1, readUpTo: 3, deliveredUpTo: 4, peerReadUpTo: 2, peerDeliveredUpTo: 2 });
    // marks only grow: an older read and delivered change nothing
    await db.store.applyMarks([mark(a, c, 'read', 1), mark(a, c, 'delivered', 2)]);
    expect((await listOf(a))[0]).toMatchObject({ unread: 1, readUpTo: 3, deliveredUpTo: 4 });
    // a read mark counts as delivered
    await db.store.applyMarks([mark(b, c, 'read', 4)]);
    expect((await listOf(a))[0]).toMatchObject({ peerReadUpTo: 4, peerDeliveredUpTo: 4 });
  });

  it('unread stays exact when a message is stored late, below the read mark or above it, and across an empty position', async () => {
    const [a, b] = users(2) as [string, string];
    const c = directConversation(a, b);
    await db.store.reservePositions(conversationKey(c), 10);
    // 1, 2, 4, 6 stored; 3 arrives late; 5 never does (reported empty)
    const early = [makeMessage(b, a, { seq: 1 }), makeMessage(b, a, { seq: 2 }), makeMessage(b, a, { seq: 4 }), makeMessage(b, a, { seq: 6 })];
    await db.store.insertBatch(early);
    await db.store.applyMarks([mark(a, c, 'read', 4)]);
    // only 6 is above the mark: 3 (missing) is below it and counts as read once it is stored
    expect((await listOf(a))[0]).toMatchObject({ unread: 1 });
    await db.store.insertBatch([makeMessage(b, a, { seq: 3 })]);
    expect((await listOf(a))[0]).toMatchObject({ unread: 1 });
    const scanner = createEmptyPositions({ sequelize: db.sequelize, emptyAfterMs: 60_000, intervalMs: 3_600_000, log: createLogger('test', 'silent'), now: () => Date.now() + 61_000 });
    expect(await scanner.scan()).toBeGreaterThanOrEqual(1);
    await scanner.close();
    // position 5 is empty: not a message, not unread; the last message is still 6
    const [line] = await listOf(a);
    expect(line).toMatchObject({ unread: 1, last: expect.objectContaining({ seq: 6 }) });
    await db.store.applyMarks([mark(a, c, 'read', 6)]);
    expect((await listOf(a))[0]).toMatchObject({ unread: 0 });
    // a message stored late above the mark (7 after 8) is unread when it lands
    await db.store.insertBatch([makeMessage(b, a, { seq: 8 })]);
    expect((await listOf(a))[0]).toMatchObject({ unread: 1 });
    await db.store.insertBatch([makeMessage(b, a, { seq: 7 })]);
    expect((await listOf(a))[0]).toMatchObject({ unread: 2, last: expect.objectContaining({ seq: 8 }) });
  });

  it("a room member's marks start where it (re)joined, and unread counts only what its membership shows", async () => {
    const [owner, late, leaver] = users(3) as [string, string, string];
    const room = `r_TEST${uniqueTag().toUpperCase()}`;
    const c = roomConversation(room);
    await db.store.reservePositions(room, 100);
    // late joined after position 3; leaver saw 1..2, left, and is back from 5 on
    await addRoom(room, owner, [
      { user: owner, from: 0 },
      { user: late, from: 3 },
      { user: leaver, from: 0, to: 2 },
      { user: leaver, from: 5 },
    ]);
    await db.store.insertBatch(Array.from({ length: 7 }, (_, i) => makeMessage(owner, owner, { conversation: c, seq: i + 1 })));
    expect((await listOf(late))[0]).toMatchObject({ room, unread: 4, readUpTo: 3, deliveredUpTo: 3, muted: false, last: expect.objectContaining({ room, seq: 7 }) });
    expect((await listOf(late))[0]).not.toHaveProperty('peerReadUpTo');
    // the leaver's marks start again where it rejoined (5): 6 and 7 are unread, never 3..5 it did not see
    await db.store.applyMarks([mark(leaver, c, 'read', 1)]);
    expect((await listOf(leaver))[0]).toMatchObject({ unread: 2, readUpTo: 5 });
    await db.store.applyMarks([mark(leaver, c, 'read', 6)]);
    expect((await listOf(leaver))[0]).toMatchObject({ unread: 1, readUpTo: 6 });
    expect((await listOf(owner))[0]).toMatchObject({ unread: 0 });
  });

  it('pages newest first by the last message, and `before` skips no conversation that shares a ts across the page boundary', async () => {
    const [me, ...others] = users(6) as [string, ...string[]];
    const base = Date.now() - 60_000;
    // five conversations; the 2nd and 3rd newest share a ts
    const tss = [base + 5000, base + 4000, base + 4000, base + 2000, base + 1000];
    for (const [i, other] of others.entries()) {
      await db.store.reservePositions(conversationKey(directConversation(me, other)), 10);
      await db.store.insertBatch([makeMessage(other, me, { seq: 1, ts: tss[i] as number })]);
    }
    const first = await conversations.list(me, undefined, 2);
    // the 2nd would share its ts with the 3rd, which does not fit: both go to the next page
    expect(first.conversations.map((x) => ('with' in x ? x.with : ''))).toEqual([others[0]]);
    expect(first.more).toBe(true);
    const second = await conversations.list(me, first.conversations.at(-1)?.last.ts, 2);
    expect(second.conversations.map((x) => ('with' in x ? x.with : '')).sort()).toEqual([others[1], others[2]].sort());
    const third = await conversations.list(me, second.conversations.at(-1)?.last.ts, 2);
    expect(third.conversations.map((x) => ('with' in x ? x.with : ''))).toEqual([others[3], others[4]]);
    expect(third.more).toBe(false);
  });

  it('a self-conversation is listed once, with nothing unread', async () => {
    const [a] = users(1) as [string];
    await db.store.reservePositions(conversationKey(directConversation(a, a)), 10);
    await db.store.insertBatch([makeMessage(a, a, { seq: 1 })]);
    expect(await listOf(a)).toEqual([expect.objectContaining({ with: a, unread: 0 })]);
  });

  it('sharedWith: a direct conversation either way or a room both are in now; reserved: how far positions went', async () => {
    const [a, b, c, d] = users(4) as [string, string, string, string];
    await db.store.reservePositions(conversationKey(directConversation(b, a)), 3);
    const room = `r_TEST${uniqueTag().toUpperCase()}`;
    await addRoom(room, a, [{ user: a, from: 0 }, { user: c, from: 0 }, { user: d, from: 0, to: 4 }]);
    expect((await conversations.sharedWith(a, [b, c, d])).sort()).toEqual([b, c].sort());
    expect(await conversations.reserved(conversationKey(directConversation(a, b)))).toBe(3);
    expect(await conversations.reserved('nobody:ever')).toBe(0);
  });
});
