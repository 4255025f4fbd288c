/**
 * What a chat screen needs, through the package on a two-instance cluster with
 * the real services: presence watched again after a reconnect, typing,
 * `delivered` sent on its own and `read` on markRead (positions without holes,
 * empty ones included), a room member's receipts starting where it joined and
 * every member's marks asked for, the conversation list and mutes.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import WebSocket from 'ws';
import { createChatClient, type ChatClient, type PresenceState, type ReceiptEvent, type WireMessage } from '@simplechat/client';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { eventually } from '../../test/helpers';

let c: TestCluster;
const clients: ChatClient[] = [];

beforeAll(async () => {
  c = await startCluster({ wsCount: 2 });
}, 60_000);

afterAll(async () => {
  await Promise.all(clients.map((x) => x.close()));
  await c?.close();
});

function client(userId: string, i: number, autoDelivered = true) {
  const seen = { messages: [] as WireMessage[], receipts: [] as ReceiptEvent[], presence: [] as Record<string, PresenceState>[], typing: [] as string[] };
  const x = createChatClient({ WebSocket, urls: [c.wsUrl(i), c.wsUrl(1 - i)], getToken: () => c.token(userId), minBackoffMs: 50, maxBackoffMs: 300, requestTimeoutMs: 5000, autoDelivered });
  x.on('message', (m) => seen.messages.push(m));
  x.on('receipt', (r) => seen.receipts.push(r));
  x.on('presence', (p) => seen.presence.push(p));
  x.on('typing', (t) => seen.typing.push(t.from));
  clients.push(x);
  return { x, seen };
}
const ready = (x: ChatClient) => eventually(() => expect(x.state).toBe('ready'));
const markOf = (receipts: ReceiptEvent[], kind: string, user: string) => Math.max(0, ...receipts.filter((r) => r.kind === kind && r.marks[user] !== undefined).map((r) => r.marks[user] as number));

describe('the client package on a chat screen', () => {
  it('presence is watched again after a reconnect; typing is signalled at most once a second', async () => {
    const [ann, bo] = [uid('ann'), uid('bo')];
    const a = client(ann, 0);
    await ready(a.x);
    expect(await a.x.watch([bo])).toEqual({ [bo]: { online: false } });
    const b = client(bo, 1);
    await ready(b.x);
    await eventually(() => expect(a.x.presenceOf(bo)).toEqual({ online: true }));
    // a client of ann's whose connection drops: the new connection watches bo again and sees bo leave
    const sockets: WebSocket[] = [];
    const a2 = createChatClient({ WebSocket, url: c.wsUrl(0), getToken: () => c.token(ann), onSocket: (s) => sockets.push(s) });
    clients.push(a2);
    await ready(a2);
    await a2.watch([bo]);
    sockets[0]?.terminate();
    await eventually(() => expect(sockets.length).toBeGreaterThan(1));
    await ready(a2);
    await b.x.close();
    await eventually(() => expect(a2.presenceOf(bo)).toMatchObject({ online: false, lastSeen: expect.any(Number) }));

    const carl = uid('carl');
    const x = client(carl, 1);
    await ready(x.x);
    for (let i = 0; i < 5; i++) a.x.typing({ with: carl });
    await eventually(() => expect(x.seen.typing).toEqual([ann]));
  });

  it("delivered goes out on its own, read on markRead: the other side sees both, and the reader's list has nothing unread", async () => {
    const [dee, eve] = [uid('dee'), uid('eve')];
    const d = client(dee, 0);
    const e = client(eve, 1);
    await Promise.all([ready(d.x), ready(e.x)]);
    const acks = [];
    for (let i = 0; i < 3; i++) acks.push(await d.x.send(eve, `m${i}`));
    await eventually(() => expect(markOf(d.seen.receipts, 'delivered', eve)).toBe(3));
    expect(e.x.marksOf({ with: dee })).toEqual({ delivered: 3, read: 3 });
    // storage has the receipt once the writer's batch holding it commits (acks wait for the broker, not for it)
    await eventually(async () => {
      const [line] = (await e.x.conversations()).conversations;
      expect(line).toMatchObject({ with: dee, unread: 3, deliveredUpTo: 3, readUpTo: 0 });
    });
    expect(e.x.markRead({ with: dee })).toBe(3);
    // nothing new: no second read
    expect(e.x.markRead({ with: dee })).toBeUndefined();
    await eventually(() => expect(markOf(d.seen.receipts, 'read', eve)).toBe(3));
    await eventually(async () => {
      const [line] = (await e.x.conversations()).conversations;
      expect(line).toMatchObject({ unread: 0, readUpTo: 3 });
    });
    // the sender's own position counts: eve replies, then dee's reply at 5 leaves no hole for eve
    await e.x.send(dee, 'reply');
    await d.x.send(eve, 'again');
    await eventually(() => expect(e.x.marksOf({ with: dee }).delivered).toBe(5));
  });

  it("a member added later starts where it joined: its delivered marks move from there", async () => {
    const [owner, late] = [uid('owner'), uid('late')];
    const o = client(owner, 0);
    await ready(o.x);
    const room = (await o.x.createRoom('Later', [])).room;
    for (let i = 0; i < 3; i++) await o.x.send({ room }, `before ${i}`);
    await o.x.addMember(room, late);
    const l = client(late, 1);
    await ready(l.x);
    await o.x.send({ room }, 'after');
    await eventually(() => expect(l.seen.messages.filter((m) => m.room === room)).toHaveLength(1));
    // positions 1-3 predate it: the conversation list seeds its marks at 3, so 4 is delivered at once
    await eventually(() => expect(markOf(o.seen.receipts, 'delivered', late)).toBe(4));
    expect(l.x.markRead({ room })).toBe(4);
    // a page opened now asks for every member's marks (the owner's client said delivered up to its own sends)
    await eventually(() => expect(markOf(o.seen.receipts, 'read', late)).toBe(4));
    await eventually(async () => expect(await o.x.roomMarks(room)).toEqual({ room, delivered: { [owner]: 4, [late]: 4 }, read: { [owner]: 0, [late]: 4 } }));
  });

  it('without automatic receipts nothing is marked delivered; mute shows in the list', async () => {
    const [fay, gus] = [uid('fay'), uid('gus')];
    const f = client(fay, 0);
    const g = client(gus, 1, false);
    await Promise.all([ready(f.x), ready(g.x)]);
    await f.x.send(gus, 'quiet');
    await eventually(() => expect(g.seen.messages).toHaveLength(1));
    await g.x.mute({ with: fay }, Date.now() + 60_000);
    await eventually(async () => {
      const [line] = (await g.x.conversations()).conversations;
      expect(line).toMatchObject({ with: fay, unread: 1, deliveredUpTo: 0, muted: true });
    });
    expect(f.seen.receipts).toEqual([]);
  });
});
