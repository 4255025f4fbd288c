/**
 * Empty positions (PROTOCOL.md "Positions") against the real Postgres: a hole
 * below a stored message is reported once EMPTY_AFTER_MS has passed since that
 * message's acceptance, in history and in sync; a message never lands on a
 * position reported empty (a late one is stored at a new position).
 */
import { describe, expect, it } from 'vitest';
import { conversationKey, createLogger, directConversation, roomConversation } from '@simplechat/shared';
import { createEmptyPositions, ulidFloor } from '../src/empty-positions';
import { makeMessage, ownDatabase, uniqueTag, users } from './support';

// A database of this file's own: a scan covers every conversation, and other files' must not be touched.
const db = ownDatabase('empty');

/** A scanner whose clock is `ahead` ms in the future: messages stored now count as accepted long ago. */
function scanner(emptyAfterMs: number, ahead: number) {
  return createEmptyPositions({ sequelize: db.sequelize, emptyAfterMs, intervalMs: 3_600_000, log: createLogger('test', 'silent'), now: () => Date.now() + ahead });
}
describe('empty positions', () => {
  it('ulidFloor sorts below every msgId of its millisecond and above those before it', () => {
    expect(ulidFloor(0)).toBe('00000000000000000000000000');
    expect(ulidFloor(1_732_345_678_901) < ulidFloor(1_732_345_678_902)).toBe(true);
  });

  it('a hole below a stored message is reported after EMPTY_AFTER_MS, in history and sync; a message late for it is stored at a new position', async () => {
    const [a, b] = users(2) as [string, string];
    const c = directConversation(a, b);
    const key = conversationKey(c);
    // positions 1, 2 and 5 stored; 3 and 4 handed out (storage's counter says 5) but never stored
    await db.store.reservePositions(key, 5);
    const m1 = makeMessage(a, b, { seq: 1 });
    const m2 = makeMessage(b, a, { seq: 2 });
    const m5 = makeMessage(a, b, { seq: 5 });
    await db.store.insertBatch([m1, m2, m5]);

    // not yet: the later message was accepted just now
    expect(await scanner(60_000, 0).scan()).toBe(0);
    const s = scanner(60_000, 61_000);
    expect(await s.scan()).toBe(2);
    await s.close();
    // once only
    const again = scanner(60_000, 120_000);
    expect(await again.scan()).toBe(0);
    await again.close();

    const h = await db.store.history({ user: a, with: b, limit: 50 });
    expect(h.messages.map((m) => m.seq)).toEqual([1, 2, 5]);
    expect(h.empty).toEqual([3, 4]);
    const synced = await db.store.sync({ user: b, limit: 500 });
    expect(synced.empty).toEqual([{ with: a, seqs: [3, 4] }]);
    expect(synced.messages.map((m) => m.msgId)).toEqual(expect.arrayContaining([m1.msgId, m2.msgId, m5.msgId]));

    // the message of position 3 arrives late: stored once, never at 3
    const late = makeMessage(b, a, { seq: 3 });
    expect(await db.store.insertBatch([late])).toBe(1);
    const after = await db.store.history({ user: a, with: b, limit: 50 });
    const stored = after.messages.find((m) => m.msgId === late.msgId);
    expect(stored?.seq).toBeGreaterThan(5);
    expect(after.empty).toEqual([3, 4]);
    // and a redelivery of it stores nothing
    expect(await db.store.insertBatch([late])).toBe(0);
  });

  it('marks a room hole for the room, reported in the members sync', async () => {
    const [a] = users(1) as [string];
    const room = `r_TEST${Date.now().toString(36).toUpperCase()}${Math.floor(Math.random() * 1e6)}`;
    await db.sequelize.query(`INSERT INTO rooms (id, name, owner, version) VALUES ($1, 'x', $2, 1)`, { bind: [room, a] });
    await db.sequelize.query(`INSERT INTO room_members (room_id, user_id, joined_at, from_position) VALUES ($1, $2, now(), 0)`, { bind: [room, a] });
    await db.store.reservePositions(room, 3);
    await db.store.insertBatch([makeMessage(a, a, { conversation: roomConversation(room), seq: 1 }), makeMessage(a, a, { conversation: roomConversation(room), seq: 3 })]);
    const s = scanner(60_000, 61_000);
    expect(await s.scan()).toBeGreaterThanOrEqual(1);
    await s.close();
    const synced = await db.store.sync({ user: a, limit: 500 });
    expect(synced.empty).toEqual(expect.arrayContaining([{ room, seqs: [2] }]));
  });
});
