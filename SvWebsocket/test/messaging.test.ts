import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { CURSOR_RE, ProtocolSocket } from '@simplechat/shared';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { eventually } from '../../test/helpers';

const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/;
let c: TestCluster;
const open: ProtocolSocket[] = [];
async function connect(user: string, i = 0): Promise<ProtocolSocket> {
  const s = await c.connect(user, i);
  open.push(s);
  return s;
}
async function stored(msgId: string): Promise<Record<string, unknown>[]> {
  return (await c.db.query('SELECT id, sender, recipient, body, created_at, client_id FROM messages WHERE id = $1', [msgId])).rows;
}

beforeAll(async () => {
  c = await startCluster({ wsCount: 2 });
});
afterAll(async () => {
  for (const s of open) s.close();
  await c?.close();
});

describe('messaging across a two-instance cluster', () => {
  it('registered carries the user, the instance, a cursor and the sync interval', async () => {
    const s = await ProtocolSocket.open(c.wsUrl(1));
    open.push(s);
    const alice = uid('alice');
    const reg = await s.register(await c.token(alice));
    expect(reg).toMatchObject({ type: 'registered', userId: alice, instanceId: 'ws-2', syncIntervalMs: 30000 });
    expect(reg.cursor).toMatch(CURSOR_RE);
  });

  it('acks a send only with a broker-confirmed msgId, and the message is stored once', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice);
    const ack = await a.request({ type: 'send', id: 'c-1', to: bob, body: 'hello' });
    expect(ack).toMatchObject({ type: 'ack', id: 'c-1' });
    expect(ack.msgId).toMatch(ULID);
    expect(typeof ack.ts).toBe('number');
    const rows = await eventually(async () => {
      const r = await stored(ack.msgId as string);
      expect(r).toHaveLength(1);
      return r;
    });
    expect(rows[0]).toMatchObject({ sender: alice, recipient: bob, body: 'hello', client_id: 'c-1' });
    expect(new Date(rows[0]?.created_at as string).getTime()).toBe(ack.ts);
  });

  it('delivers to a recipient on the same instance', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await connect(bob, 0);
    const ack = await a.request({ type: 'send', id: 'x1', to: bob, body: 'same instance' });
    const m = await b.waitForMessage((m) => m.msgId === ack.msgId);
    expect(m).toMatchObject({ from: alice, to: bob, body: 'same instance', ts: ack.ts });
  });

  it('a message to a user on another instance arrives once', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const ack = await a.request({ type: 'send', id: 'x2', to: bob, body: 'cross instance' });
    await b.waitForMessage((m) => m.msgId === ack.msgId);
    await a.request({ type: 'send', id: 'x3', to: bob, body: 'fence' }).then((f) => b.waitForMessage((m) => m.msgId === f.msgId));
    expect(b.messages().filter((m) => m.msgId === ack.msgId)).toHaveLength(1);
  });

  it('both ways across instances', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const ack = await b.request({ type: 'send', id: 'y1', to: alice, body: 'back' });
    await a.waitForMessage((m) => m.msgId === ack.msgId && m.from === bob);
  });

  it('every connection of the recipient, on both instances, and the sender\'s other connections receive it', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a1 = await connect(alice, 0);
    const a2 = await connect(alice, 1);
    const a3 = await connect(alice, 0);
    const b1 = await connect(bob, 0);
    const b2 = await connect(bob, 1);
    const b3 = await connect(bob, 1);
    const ack = await a1.request({ type: 'send', id: 'multi', to: bob, body: 'to all tabs' });
    for (const s of [a2, a3, b1, b2, b3]) await s.waitForMessage((m) => m.msgId === ack.msgId);
    // the sending connection gets the ack, not a copy
    await b1.waitForMessage((m) => m.msgId === ack.msgId);
    expect(a1.messages().some((m) => m.msgId === ack.msgId)).toBe(false);
  });

  it('a message to oneself reaches the sending connection (ack and message) and the other ones', async () => {
    const alice = uid('alice');
    const a1 = await connect(alice, 0);
    const a2 = await connect(alice, 1);
    const ack = await a1.request({ type: 'send', id: 'self', to: alice, body: 'note to self' });
    await a1.waitForMessage((m) => m.msgId === ack.msgId);
    await a2.waitForMessage((m) => m.msgId === ack.msgId);
  });

  it('resending the same id, even with other content and on another instance, returns the first msgId and ts and stores once', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const carol = uid('carol');
    const b = await connect(bob, 0);
    const cc = await connect(carol, 1);
    const a1 = await connect(alice, 0);
    const first = await a1.request({ type: 'send', id: 'dup', to: bob, body: 'original' });
    const again = await a1.request({ type: 'send', id: 'dup', to: bob, body: 'original' });
    const a2 = await connect(alice, 1);
    const changed = await a2.request({ type: 'send', id: 'dup', to: bob, body: 'changed' });
    const elsewhere = await a2.request({ type: 'send', id: 'dup', to: carol, body: 'original' });
    for (const r of [again, changed, elsewhere]) expect(r).toMatchObject({ type: 'ack', msgId: first.msgId, ts: first.ts });
    // The new content is ignored live too: a later message from the same connection arrives, the changed body never does.
    const marker = await a2.request({ type: 'send', id: 'marker', to: bob, body: 'after' });
    await b.waitForMessage((m) => m.msgId === marker.msgId);
    expect(b.messages().filter((m) => m.msgId === first.msgId).map((m) => [m.body, m.to])).toEqual([
      ['original', bob],
      ['original', bob],
      ['original', bob],
    ]);
    expect(cc.messages()).toEqual([]);
    await eventually(async () => expect(await stored(first.msgId as string)).toHaveLength(1));
    const rows = (await c.db.query('SELECT body, recipient FROM messages WHERE sender = $1 AND client_id = $2', [alice, 'dup'])).rows;
    expect(rows).toEqual([{ body: 'original', recipient: bob }]);
  });

  it('msgIds of one sender sort in sending order', async () => {
    const alice = uid('alice');
    const a = await connect(alice, 0);
    const acks = await Promise.all(Array.from({ length: 50 }, (_, i) => a.request({ type: 'send', id: `o${i}`, to: 'bob', body: String(i) })));
    const ids = acks.map((x) => x.msgId as string);
    expect([...ids].sort()).toEqual(ids);
  });

  it('one sender on two instances, among others: msgIds stay unique and in order per sender, every message stored', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const carol = uid('carol');
    const a1 = await connect(alice, 0);
    const a2 = await connect(alice, 1);
    const b1 = await connect(bob, 0);
    const c2 = await connect(carol, 1);
    // alice alternates instances in lockstep; bob and carol send beside her on each instance
    const acks: { from: string; msgId: string }[] = [];
    for (let round = 0; round < 25; round++) {
      const sends: [string, ReturnType<ProtocolSocket['request']>][] = [];
      for (let j = 0; j < 2; j++) {
        sends.push([alice, a1.request({ type: 'send', id: `x${round}-${j}-1`, to: carol, body: 'a1' })]);
        sends.push([alice, a2.request({ type: 'send', id: `x${round}-${j}-2`, to: bob, body: 'a2' })]);
        sends.push([bob, b1.request({ type: 'send', id: `x${round}-${j}`, to: carol, body: 'b' })]);
        sends.push([carol, c2.request({ type: 'send', id: `x${round}-${j}`, to: bob, body: 'c' })]);
      }
      for (const [from, p] of sends) acks.push({ from, msgId: (await p).msgId as string });
    }
    const ids = acks.map((k) => k.msgId);
    expect(new Set(ids).size).toBe(ids.length);
    // each round starts after the previous one's acks: alice's msgIds of a later round sort after her earlier ones
    const alices = acks.filter((k) => k.from === alice).map((k) => k.msgId);
    for (let r = 1; r < 25; r++) expect(alices.slice(r * 4, r * 4 + 4).every((id) => alices.slice(0, r * 4).every((prev) => prev < id))).toBe(true);
    await eventually(async () => expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE id = ANY($1)', [ids])).rows[0].n).toBe(ids.length), { timeoutMs: 15_000 });
  }, 30_000);

  it('history pages a conversation oldest first, with more and before', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const acks = [];
    for (let i = 0; i < 7; i++) acks.push(await a.request({ type: 'send', id: `h${i}`, to: bob, body: `m${i}` }));
    await a.request({ type: 'send', id: 'other', to: uid('carol'), body: 'not in this conversation' });
    await eventually(async () => expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE sender = $1', [alice])).rows[0].n).toBe(8));
    const b = await connect(bob, 1);
    const page1 = await b.request({ type: 'history', with: alice, limit: 3 });
    expect(page1).toMatchObject({ type: 'history', with: alice, more: true });
    expect((page1.messages as { body: string }[]).map((m) => m.body)).toEqual(['m4', 'm5', 'm6']);
    const page2 = await b.request({ type: 'history', with: alice, limit: 3, before: (page1.messages as { msgId: string }[])[0]?.msgId });
    expect((page2.messages as { body: string }[]).map((m) => m.body)).toEqual(['m1', 'm2', 'm3']);
    // msgIds are ULIDs, which are case-insensitive: a lower-case copy pages from the same place.
    const lower = await b.request({ type: 'history', with: alice, limit: 3, before: (page1.messages as { msgId: string }[])[0]?.msgId.toLowerCase() });
    expect(lower.messages).toEqual(page2.messages);
    const page3 = await b.request({ type: 'history', with: alice, limit: 3, before: (page2.messages as { msgId: string }[])[0]?.msgId });
    expect(page3).toMatchObject({ more: false });
    expect((page3.messages as { body: string }[]).map((m) => m.body)).toEqual(['m0']);
  });

  it('a user who was offline catches up with sync from its saved cursor, following more', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const b = await connect(bob, 1);
    const saved = (b.frames.find((f) => f.type === 'registered')?.cursor as string) ?? '0';
    b.close();
    await b.waitForClose();
    const a = await connect(alice, 0);
    const sent: string[] = [];
    for (let i = 0; i < 5; i++) sent.push((await a.request({ type: 'send', id: `s${i}`, to: bob, body: `while away ${i}` })).msgId as string);
    await eventually(async () => expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE recipient = $1', [bob])).rows[0].n).toBe(5));
    const back = await connect(bob, 0);
    let cursor = saved;
    const got: string[] = [];
    for (;;) {
      const page = await back.request({ type: 'sync', after: cursor, limit: 2 });
      expect(page.type).toBe('sync');
      got.push(...(page.messages as { msgId: string }[]).map((m) => m.msgId));
      cursor = page.cursor as string;
      if (!page.more) break;
    }
    expect(got).toEqual(sent);
    const empty = await back.request({ type: 'sync', after: cursor });
    expect(empty).toMatchObject({ messages: [], cursor, more: false });
  });

  it('history and sync: default and largest limits, sync from the very first message without after, entries in the message shape', async () => {
    const alice = uid('alice');
    const dana = uid('dana');
    const a = await connect(alice, 0);
    const acks = await Promise.all(Array.from({ length: 55 }, (_, i) => a.request({ type: 'send', id: `l${i}`, to: dana, body: `n${i}` })));
    expect(acks.every((k) => k.type === 'ack')).toBe(true);
    await eventually(async () => expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE recipient = $1', [dana])).rows[0].n).toBe(55));
    const d = await connect(dana, 1);
    const history = await d.request({ type: 'history', with: alice });
    expect(history).toMatchObject({ type: 'history', more: true });
    const entries = history.messages as Record<string, unknown>[];
    expect(entries).toHaveLength(50);
    expect(Object.keys(entries[0] as object).sort()).toEqual(['body', 'from', 'msgId', 'seq', 'to', 'ts', 'type']);
    expect(entries[0]).toMatchObject({ type: 'message', from: alice, to: dana });
    expect(await d.request({ type: 'history', with: alice, limit: 200 })).toMatchObject({ more: false });
    expect(await d.request({ type: 'history', with: alice, limit: 201 })).toMatchObject({ type: 'error', code: 'bad_request' });
    // no `after`: from the very first stored message (of the whole store, so follow `more`)
    const first = await d.request({ type: 'sync', limit: 500 });
    expect(first).toMatchObject({ type: 'sync' });
    let cursor = first.cursor as string;
    const got = (first.messages as { msgId: string; type: string }[]).filter((m) => acks.some((k) => k.msgId === m.msgId));
    for (let more = first.more; more; ) {
      const page = await d.request({ type: 'sync', after: cursor, limit: 500 });
      got.push(...(page.messages as { msgId: string; type: string }[]).filter((m) => acks.some((k) => k.msgId === m.msgId)));
      cursor = page.cursor as string;
      more = page.more as boolean;
    }
    expect(got.map((m) => m.msgId).sort()).toEqual(acks.map((k) => k.msgId).sort());
    expect(got.every((m) => m.type === 'message')).toBe(true);
    const byDefault = await d.request({ type: 'sync' });
    expect((byDefault.messages as unknown[]).length).toBeLessThanOrEqual(200);
    expect(await d.request({ type: 'sync', limit: 501 })).toMatchObject({ type: 'error', code: 'bad_request' });
  });

  it('a message accepted while the recipient registers reaches it live or through sync', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = new ProtocolSocket(c.wsUrl(1));
    open.push(b);
    await b.opened;
    b.send({ type: 'register', token: await c.token(bob) });
    const ack = await a.request({ type: 'send', id: 'race', to: bob, body: 'during register' });
    const reg = await b.waitFor((f) => f.type === 'registered');
    await eventually(async () => {
      if (b.messages().some((m) => m.msgId === ack.msgId)) return;
      const page = await b.request({ type: 'sync', after: '0' });
      expect((page.messages as { msgId: string }[]).some((m) => m.msgId === ack.msgId)).toBe(true);
    });
    expect(reg.userId).toBe(bob);
  });
});

describe('idempotency when Redis forgets', () => {
  it('a resend after the idempotency keys were lost keeps its first msgId, found in storage', async () => {
    const alice = uid('alice');
    const a = await connect(alice, 0);
    const first = await a.request({ type: 'send', id: 'forgotten', to: 'bob', body: 'before the loss' });
    await eventually(async () => expect(await stored(first.msgId as string)).toHaveLength(1));
    // Redis loses its memory: every key of this cluster is gone, the epoch too.
    const { createClient } = await import('redis');
    const r = createClient({ url: 'redis://127.0.0.1:6379' });
    await r.connect();
    for await (const keys of r.scanIterator({ MATCH: `${c.keyPrefix}idem:*`, COUNT: 1000 })) if (keys.length) await r.del(keys);
    // the instances notice on their next heartbeat and record a young epoch
    await eventually(async () => expect(await r.exists(`${c.keyPrefix}idem:epoch`)).toBe(1));
    await r.close();
    const again = await a.request({ type: 'send', id: 'forgotten', to: 'bob', body: 'before the loss' });
    expect(again).toMatchObject({ type: 'ack', msgId: first.msgId, ts: first.ts });
    expect((await c.db.query('SELECT count(*)::int AS n FROM messages WHERE sender = $1', [alice])).rows[0].n).toBe(1);
  });
});
