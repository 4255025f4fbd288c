/**
 * Receipts against a scripted server: `delivered` goes up to the highest
 * position without a hole (empty positions fill one), a conversation seeded
 * by a list asked before its first message still says delivered, a receipt
 * the server could not store is sent again, one refused for good is not, and
 * what was sent just before a connection went is sent again on the next one.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { eventually } from '../../test/helpers';
import { scriptedServerPerTest, testClient, type Frame, type ScriptedServer } from './scripted-server';

const servers = scriptedServerPerTest();
let server: ScriptedServer;
beforeEach(() => {
  server = servers.get();
});

const message = (seq: number) => ({ type: 'message', msgId: `01JD00000000000000000000${String(seq).padStart(2, '0')}`, from: 'bob', to: 'alice', body: `m${seq}`, ts: seq, seq });
const receipts = (frames: Frame[]) => frames.filter((f) => f.type === 'receipt');

describe('receipts', () => {
  it('delivered waits for a hole to fill, by a message or an empty position; markRead sends read once', async () => {
    let isEmptyReported = false;
    server.script = (conn, f) => {
      if (f.type === 'conversations') return void conn.send({ type: 'conversations', id: f.id, conversations: [], more: false });
      if (f.type === 'sync' && isEmptyReported) return void conn.send({ type: 'sync', id: f.id, messages: [], cursor: '1', more: false, empty: [{ with: 'bob', seqs: [2] }] });
    };
    server.registeredCursor = '0';
    const client = testClient(server.url);
    await eventually(() => expect(client.state).toBe('ready'));
    const conn = await server.conn(0);
    conn.send(message(1));
    conn.send(message(4));
    await eventually(() => expect(receipts(conn.frames).at(-1)).toMatchObject({ kind: 'delivered', with: 'bob', upTo: 1 }));
    // 2 is empty (sync says so), 3 arrives: no hole below 4
    isEmptyReported = true;
    client.sync();
    conn.send(message(3));
    await eventually(() => expect(receipts(conn.frames).at(-1)).toMatchObject({ kind: 'delivered', with: 'bob', upTo: 4 }));
    expect(client.markRead({ with: 'bob' })).toBe(4);
    expect(client.markRead({ with: 'bob' })).toBeUndefined();
    await eventually(() => expect(receipts(conn.frames).filter((f) => f.kind === 'read').map((f) => f.upTo)).toEqual([4]));
  });

  it('a conversation whose first message comes while the list is being asked for another is seeded by that answer and says delivered', async () => {
    let held: (() => void) | undefined;
    server.script = (conn, f) => {
      if (f.type !== 'conversations') return;
      const answer = () => conn.send({ type: 'conversations', id: f.id, conversations: [{ with: 'bob', last: message(1), unread: 1, readUpTo: 0, deliveredUpTo: 0, muted: false }], more: false });
      // the first list (asked for carol's conversation) answers only once bob's message is in
      if (held === undefined) held = answer;
      else answer();
    };
    const client = testClient(server.url);
    await eventually(() => expect(client.state).toBe('ready'));
    const conn = await server.conn(0);
    expect(client.markRead({ with: 'carol' })).toBeUndefined();
    await eventually(() => expect(held).toBeDefined());
    conn.send(message(1));
    await eventually(() => expect(client.marksOf({ with: 'bob' }).delivered).toBe(1));
    held?.();
    await eventually(() => expect(receipts(conn.frames)).toEqual([expect.objectContaining({ kind: 'delivered', with: 'bob', upTo: 1 })]));
  });

  it('a receipt answered unavailable is sent again; one refused for good is not', async () => {
    let refusals = 0;
    server.script = (conn, f) => {
      if (f.type === 'conversations') return void conn.send({ type: 'conversations', id: f.id, conversations: [], more: false });
      if (f.type === 'receipt' && f.kind === 'read' && refusals++ === 0) conn.send({ type: 'error', id: f.id, code: 'unavailable', message: 'message broker unavailable' });
      if (f.type === 'receipt' && f.kind === 'delivered' && f.upTo === 2) conn.send({ type: 'error', id: f.id, code: 'forbidden', message: 'not a member' });
    };
    const client = testClient(server.url, { autoDelivered: false });
    await eventually(() => expect(client.state).toBe('ready'));
    const conn = await server.conn(0);
    conn.send(message(1));
    await eventually(() => expect(client.marksOf({ with: 'bob' }).read).toBe(1));
    await eventually(() => expect(client.markRead({ with: 'bob' })).toBe(1));
    await eventually(() => expect(receipts(conn.frames).filter((f) => f.kind === 'read')).toHaveLength(2));
    expect(new Set(receipts(conn.frames).map((f) => f.id)).size).toBe(receipts(conn.frames).length);
  });

  it('marks sent just before a connection went are sent again on the next one', async () => {
    server.script = (conn, f) => {
      if (f.type === 'conversations') return void conn.send({ type: 'conversations', id: f.id, conversations: [], more: false });
    };
    const client = testClient(server.url);
    await eventually(() => expect(client.state).toBe('ready'));
    const first = await server.conn(0);
    first.send(message(1));
    await eventually(() => expect(receipts(first.frames)).toHaveLength(1));
    first.close(1001);
    const second = await server.conn(1);
    await eventually(() => expect(receipts(second.frames)).toEqual([expect.objectContaining({ kind: 'delivered', with: 'bob', upTo: 1 })]));
  });
});
