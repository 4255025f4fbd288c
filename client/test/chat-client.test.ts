import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import WebSocket from 'ws';
import { createChatClient, ChatClientClosedError, SendRejectedError, type ChatClient, type ChatClientOptions, type WireMessage } from '@simplechat/client';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { eventually } from '../../test/helpers';
import { notBefore, parsePosition } from '../../SvPersist/src/sync-cursor';

let c: TestCluster;
const clients: ChatClient[] = [];

beforeAll(async () => {
  // three instances: the third one is shut down by a test
  c = await startCluster({ wsCount: 3, wsEnv: { SYNC_INTERVAL_MS: '1000' } });
}, 60_000);

afterAll(async () => {
  await Promise.all(clients.map((x) => x.close()));
  await c?.close();
});

function client(userId: string, urls: string[], extra: Partial<ChatClientOptions<typeof WebSocket>> = {}) {
  const messages: WireMessage[] = [];
  const x = createChatClient({ WebSocket, urls, getToken: () => c.token(userId), minBackoffMs: 50, maxBackoffMs: 500, requestTimeoutMs: 5000, ...extra });
  x.on('message', (m) => messages.push(m));
  clients.push(x);
  return { x, messages };
}

const ready = (x: ChatClient) => eventually(() => expect(x.state).toBe('ready'));

describe('createChatClient', () => {
  it('sends, is acked, and every connection of the recipient shows the message once', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = client(alice, [c.wsUrl(0)]);
    const b1 = client(bob, [c.wsUrl(0)]);
    const b2 = client(bob, [c.wsUrl(1)]);
    await Promise.all([a.x, b1.x, b2.x].map(ready));
    const ack = await a.x.send(bob, 'hello');
    expect(ack.msgId).toMatch(/^[0-9A-Z]{26}$/);
    for (const b of [b1, b2]) await eventually(() => expect(b.messages.map((m) => m.msgId)).toEqual([ack.msgId]));
    // live, then again through a periodic sync that runs after it was stored: still shown once
    await eventually(async () => expect((await c.db.query('SELECT 1 FROM messages WHERE id = $1', [ack.msgId])).rowCount).toBe(1));
    const syncsAfter = [b1, b2].map((b) => {
      let n = 0;
      b.x.on('synced', () => n++);
      return () => n;
    });
    for (const count of syncsAfter) await eventually(() => expect(count()).toBeGreaterThan(0), { timeoutMs: 5000 });
    for (const b of [b1, b2]) expect(b.messages.map((m) => m.msgId)).toEqual([ack.msgId]);
    expect(a.x.hasSeen(ack.msgId)).toBe(true);
    expect(a.x.pending()).toBe(0);
  });

  it('a send with an id already used answers with the first msgId', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = client(alice, [c.wsUrl(1)]);
    await ready(a.x);
    const first = await a.x.send(bob, 'once', { id: 'same-id' });
    const again = await a.x.send(bob, 'once more', { id: 'same-id' });
    expect(again).toEqual(first);
  });

  it('keeps sends while it cannot connect and sends them once it can, trying the next URL', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const b = client(bob, [c.wsUrl(0)]);
    await ready(b.x);
    // nothing listens on port 1: the client moves on to the next URL
    const a = client(alice, ['ws://127.0.0.1:1/ws', c.wsUrl(1)]);
    const acks = await Promise.all([a.x.send(bob, 'one'), a.x.send(bob, 'two')]);
    expect(a.x.url).toBe(c.wsUrl(1));
    // each once; arrival order is not promised (clients order by msgId)
    await eventually(() => expect(b.messages.map((m) => m.msgId).sort()).toEqual(acks.map((x) => x.msgId).sort()));
  });

  it('after its instance shuts down it reconnects elsewhere and syncs from its saved cursor', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const b = client(bob, [c.wsUrl(2), c.wsUrl(0)], { syncIntervalMs: 60_000 });
    const a = client(alice, [c.wsUrl(0)]);
    await Promise.all([a.x, b.x].map(ready));
    const closes: number[] = [];
    const syncedAfterClose: string[] = [];
    b.x.on('disconnected', (d) => closes.push(d.code));
    b.x.on('synced', (cursor) => closes.length > 0 && syncedAfterClose.push(cursor));
    const before = await a.x.send(bob, 'before');
    await eventually(() => expect(b.messages).toHaveLength(1));
    const cursorBefore = b.x.cursor as string;
    // 1001 on shutdown; whatever is sent meanwhile must come through sync from the saved cursor
    const closing = c.ws[2]?.close();
    const during = await Promise.all([a.x.send(bob, 'during 1'), a.x.send(bob, 'during 2')]);
    await closing;
    await eventually(() => expect(b.x.url).toBe(c.wsUrl(0)));
    await eventually(() => expect(b.messages.map((m) => m.msgId).sort()).toEqual([before, ...during].map((x) => x.msgId).sort()), { timeoutMs: 15_000 });
    expect(closes).toContain(1001);
    // It synced on the new instance, from the saved cursor on. (The messages sent meanwhile
    // may all have come live, before the close or after the reconnect, and be stored only after
    // that sync: then its cursor is the saved one, and the next periodic sync moves it on.)
    await eventually(() => expect(syncedAfterClose.length).toBeGreaterThan(0));
    expect(syncedAfterClose.every((cursor) => notBefore(parsePosition(cursor), parsePosition(cursorBefore)))).toBe(true);
  });

  it('asks for history and manages rooms by request: create, list, send to the room, room history, leave', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = client(alice, [c.wsUrl(0)]);
    const b = client(bob, [c.wsUrl(1)]);
    await Promise.all([a.x, b.x].map(ready));
    const direct = await a.x.send(bob, 'direct one');
    const room = await a.x.createRoom('Team', [bob]);
    expect(room).toMatchObject({ name: 'Team', owner: alice, members: expect.arrayContaining([alice, bob]) });
    expect((await b.x.listAllRooms()).map((r) => r.room)).toContain(room.room);
    const roomAck = await a.x.send({ room: room.room }, 'to the team');
    await eventually(() => expect(b.messages.map((m) => m.msgId)).toEqual(expect.arrayContaining([direct.msgId, roomAck.msgId])));
    await eventually(async () => expect((await b.x.history({ room: room.room })).messages.map((m) => m.body)).toEqual(['to the team']));
    await eventually(async () => expect((await b.x.history({ with: alice }, { limit: 10 })).messages.map((m) => m.msgId)).toEqual([direct.msgId]));
    await b.x.leaveRoom(room.room);
    await expect(b.x.history({ room: room.room })).rejects.toMatchObject({ name: 'RequestError', code: 'forbidden' });
    expect((await a.x.getRoom(room.room)).members).toEqual([alice]);
  });

  it('refuses for good what the server rejects, and close() rejects what is pending', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = client(alice, [c.wsUrl(0)]);
    await ready(a.x);
    await expect(a.x.send(bob, '')).rejects.toBeInstanceOf(SendRejectedError);
    const offline = client(alice, ['ws://127.0.0.1:1/ws']);
    const pending = offline.x.send(bob, 'never');
    await expect(offline.x.idle(100)).rejects.toThrow(/unacked/);
    await offline.x.close();
    await expect(pending).rejects.toBeInstanceOf(ChatClientClosedError);
    expect(offline.x.state).toBe('closed');
  });
});
