/**
 * The conversation list counts the reader's own marks before storage has
 * them (receipts.ts, withMarks), on a two-instance cluster with the real
 * services and a database of its own: with the `marks` table locked, so that
 * no receipt is stored, the list shows the marks just sent, the peer's too,
 * and `unread` counted above the new read mark; once storage has them, the
 * same.
 */
import { describe, expect, it } from 'vitest';
import { Client } from 'pg';
import { clusterPerFile, uid } from '../../test/cluster';
import { databasePerFile, eventually } from '../../test/helpers';
import type { ProtocolSocket } from '@simplechat/shared';

const databaseUrl = databasePerFile('convmarks');
const cluster = clusterPerFile({ wsCount: 2, databaseUrl });

async function line(s: ProtocolSocket, key: string) {
  const answer = await s.request({ type: 'conversations' });
  return (answer.conversations as Record<string, unknown>[]).find((c) => c.with === key || c.room === key);
}

describe('the conversation list and marks storage does not have yet', () => {
  it("shows the reader's read and delivered marks and the peer's at once, with unread counted above the new read mark", async () => {
    const [sam, rita, owner] = [uid('sam'), uid('rita'), uid('owner')];
    const s = await cluster.connect(sam, 0);
    const r = await cluster.connect(rita, 1);
    const o = await cluster.connect(owner, 0);
    for (let i = 1; i <= 5; i++) await s.request({ type: 'send', to: rita, body: `m${i}` });
    const room = (await o.request({ type: 'room.create', name: 'Marks', members: [rita] })).room as string;
    for (let i = 1; i <= 3; i++) await o.request({ type: 'send', room, body: `r${i}` });
    await eventually(async () => expect([await line(r, sam), await line(r, room)]).toMatchObject([{ unread: 5, readUpTo: 0 }, { unread: 3, readUpTo: 0 }]));

    const blocker = new Client({ connectionString: databaseUrl });
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE marks IN EXCLUSIVE MODE');
      // read part of the direct conversation, delivered all of it; read the whole room
      r.send({ type: 'receipt', kind: 'delivered', with: sam, upTo: 5 });
      r.send({ type: 'receipt', kind: 'read', with: sam, upTo: 2 });
      r.send({ type: 'receipt', kind: 'read', room, upTo: 3 });
      await s.waitFor((f) => f.type === 'receipt' && f.kind === 'read', 'the read pushed to sam');
      await o.waitFor((f) => f.type === 'receipt' && f.kind === 'read', 'the room read pushed to the owner');
      const stored = await cluster.c.db.query('SELECT count(*)::int AS n FROM marks WHERE user_id = $1', [rita]);
      expect(stored.rows[0].n).toBe(0);
      expect(await line(r, sam)).toMatchObject({ unread: 3, readUpTo: 2, deliveredUpTo: 5 });
      expect(await line(r, room)).toMatchObject({ unread: 0, readUpTo: 3, deliveredUpTo: 3 });
      expect(await line(s, rita)).toMatchObject({ unread: 0, peerReadUpTo: 2, peerDeliveredUpTo: 5 });
    } finally {
      await blocker.query('ROLLBACK').catch(() => undefined);
      await blocker.end();
    }
    await eventually(async () => expect((await cluster.c.db.query('SELECT count(*)::int AS n FROM marks WHERE user_id = $1', [rita])).rows[0].n).toBe(2));
    expect(await line(r, sam)).toMatchObject({ unread: 3, readUpTo: 2, deliveredUpTo: 5 });
    expect(await line(r, room)).toMatchObject({ unread: 0, readUpTo: 3, deliveredUpTo: 3 });
  });
});
