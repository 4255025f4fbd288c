/**
 * Presence and typing (PROTOCOL.md v1.1 "Presence and typing") on a
 * two-instance cluster with the real services, plus a real SvWebsocket
 * process killed with SIGKILL: user-level presence across instances, offline
 * soon after the last connection, within the lease after a crash, repaired
 * after a lost notification, batched, limited, and the watch policy; typing
 * relayed live, limited, never stored.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { createClient } from 'redis';
import { ProtocolSocket, PRESENCE_USERS_PER_CONNECTION, PRESENCE_USERS_PER_FRAME } from '@simplechat/shared';
import { clusterPerFile, startGatewayProcess, uid, type GatewayProcess } from '../../test/cluster';
import { eventually, INTERNAL_TOKEN } from '../../test/helpers';
import { services } from '../../test/services';

const cluster = clusterPerFile({ wsCount: 2 });
const connect = (user: string, i = 0) => cluster.connect(user, i);
const cleanups: (() => unknown)[] = [];
afterAll(async () => {
  for (const clean of cleanups.reverse()) await clean();
});

type Frame = Awaited<ReturnType<ProtocolSocket['request']>>;
const presenceFrames = (s: ProtocolSocket) => s.frames.filter((f) => f.type === 'presence' && f.id === undefined);
/** Everything pushed to `s` about `user`, in order. */
const pushedAbout = (s: ProtocolSocket, user: string) => presenceFrames(s).flatMap((f) => ((f.users as Record<string, unknown>)[user] === undefined ? [] : [(f.users as Record<string, { online: boolean; lastSeen?: number }>)[user]]));
const latestAbout = (s: ProtocolSocket, user: string) => pushedAbout(s, user).at(-1);
/** How many instances SvDiscover says claim the user. */
async function instancesOf(user: string): Promise<number> {
  const res = await fetch(`${cluster.c.discoverUrl}/internal/lookup`, { method: 'POST', headers: { authorization: `Bearer ${INTERNAL_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ users: [user] }) });
  return ((await res.json()) as { users: Record<string, unknown[]> }).users[user]?.length ?? 0;
}
/** Waits for a pushed change (not an answer) saying `user` is online or offline. */
const waitPushed = (s: ProtocolSocket, user: string, online: boolean, timeoutMs?: number) =>
  s.waitFor((f) => f.type === 'presence' && f.id === undefined && (f.users as Record<string, { online: boolean }>)[user]?.online === online, `${user} ${online ? 'online' : 'offline'}`, timeoutMs);

async function watch(s: ProtocolSocket, users: string[]): Promise<Frame> {
  const answer = await s.request({ type: 'presence.watch', users });
  expect(answer.type).toBe('presence');
  return answer;
}

describe('presence', () => {
  it('presence.watch answers each user online or offline (with lastSeen once it has been seen), with the request id', async () => {
    const [watcher, bob, carol, dan] = [uid('watcher'), uid('bob'), uid('carol'), uid('dan')];
    const w = await connect(watcher, 0);
    await connect(bob, 1);
    const d = await connect(dan, 0);
    d.close();
    await eventually(async () => {
      const answer = await w.request({ type: 'presence.watch', id: 'p-1', users: [bob, carol, dan] });
      expect(answer).toMatchObject({ type: 'presence', id: 'p-1', users: { [bob]: { online: true }, [carol]: { online: false }, [dan]: { online: false, lastSeen: expect.any(Number) } } });
      expect((answer.users as Record<string, object>)[carol]).toEqual({ online: false });
    });
  });

  it('a user is online while any of its connections on any instance is registered, and goes offline within 2 s of the last one closing', async () => {
    const [watcher, eve, marker] = [uid('watcher'), uid('eve'), uid('marker')];
    const w = await connect(watcher, 0);
    expect((await watch(w, [eve, marker])).users).toEqual({ [eve]: { online: false }, [marker]: { online: false } });
    const e1 = await connect(eve, 1);
    await waitPushed(w, eve, true);
    const e2 = await connect(eve, 0);
    e1.close();
    // Still connected on the other instance: no change is pushed. Once SvDiscover has the release,
    // a later change through the same instance (the marker's) is pushed after anything about eve.
    await eventually(async () => expect(await instancesOf(eve)).toBe(1));
    await connect(marker, 1);
    await waitPushed(w, marker, true);
    expect(pushedAbout(w, eve)).toEqual([{ online: true }]);
    const closedAt = Date.now();
    e2.close();
    await waitPushed(w, eve, false, 2000);
    const offline = latestAbout(w, eve);
    expect(offline?.lastSeen).toBeGreaterThanOrEqual(closedAt - 50);
    expect(offline?.lastSeen).toBeLessThanOrEqual(Date.now());
  });

  it('an instance killed with SIGKILL turns its users offline for watchers on another instance within the lease, and none stays online', async () => {
    const c = cluster.c;
    const gw: GatewayProcess = await startGatewayProcess(c, { INSTANCE_ID: 'ws-doomed', HEARTBEAT_MS: '500' });
    cleanups.push(() => gw.kill());
    const users = Array.from({ length: 20 }, (_, i) => uid(`doomed${i}`));
    const sockets = await Promise.all(
      users.map(async (u) => {
        const s = await ProtocolSocket.open(gw.url);
        expect((await s.register(await c.token(u))).type).toBe('registered');
        return s;
      }),
    );
    cleanups.push(() => sockets.forEach((s) => s.close()));
    const w = await connect(uid('watcher'), 0);
    await eventually(async () => {
      const answer = await w.request({ type: 'presence.watch', users });
      expect(Object.values(answer.users as object).every((p: { online: boolean }) => p.online)).toBe(true);
    });
    const killedAt = Date.now();
    await gw.kill();
    // lease 3 s (the test cluster's), reconciled every second: all offline well within 3 s + 1 s
    await eventually(() => expect(users.filter((u) => latestAbout(w, u)?.online !== false)).toEqual([]), { timeoutMs: 8000 });
    const tookMs = Date.now() - killedAt;
    expect(tookMs).toBeLessThan(3000 + 1000 + 1500);
    for (const u of users) expect(latestAbout(w, u)).toMatchObject({ online: false, lastSeen: expect.any(Number) });
  });

  it('a change whose notification was lost is repaired by the periodic reconciliation', async () => {
    const [watcher, fay] = [uid('watcher'), uid('fay')];
    const w = await connect(watcher, 0);
    await connect(fay, 1);
    expect((await watch(w, [fay])).users).toEqual({ [fay]: { online: true } });
    // Remove fay's claim behind SvDiscover's back: no change notification is published.
    const redis = await createClient({ url: services().redisUrl }).connect();
    try {
      await redis.del(`${cluster.c.keyPrefix}user:${fay}`);
    } finally {
      await redis.quit();
    }
    await waitPushed(w, fay, false, 4000);
  });

  it('changes reach a watcher batched: 60 users connecting at once arrive in a few frames', async () => {
    const w = await connect(uid('watcher'), 0);
    const users = Array.from({ length: 60 }, (_, i) => uid(`crowd${i}`));
    await watch(w, users);
    const before = presenceFrames(w).length;
    await Promise.all(users.map((u, i) => connect(u, i % 2)));
    await eventually(() => expect(users.filter((u) => latestAbout(w, u)?.online !== true)).toEqual([]));
    // flushed every 250 ms at most: 60 changes in one to a handful of frames, never one each
    expect(presenceFrames(w).length - before).toBeLessThanOrEqual(10);
  });

  it('presence.unwatch stops the changes of those users; a closed watcher is forgotten', async () => {
    const [watcher, gus, hal] = [uid('watcher'), uid('gus'), uid('hal')];
    const w = await connect(watcher, 0);
    await watch(w, [gus, hal]);
    w.send({ type: 'presence.unwatch', users: [gus] });
    await connect(gus, 1);
    await connect(hal, 1);
    // gus came online before hal through the same instance: a change of gus would have come first
    await waitPushed(w, hal, true);
    expect(pushedAbout(w, gus)).toEqual([]);
  });

  it('limits: more than 200 users in a frame or 500 on a connection are too_large naming the limit, and nothing of that frame is watched', async () => {
    const w = await connect(uid('watcher'), 0);
    const many = Array.from({ length: PRESENCE_USERS_PER_FRAME + 1 }, (_, i) => `u${i}`);
    const tooMany = await w.request({ type: 'presence.watch', id: 'big', users: many });
    expect(tooMany).toMatchObject({ type: 'error', id: 'big', code: 'too_large' });
    expect(tooMany.message).toContain(String(PRESENCE_USERS_PER_FRAME));
    for (let i = 0; i < PRESENCE_USERS_PER_CONNECTION / PRESENCE_USERS_PER_FRAME - 0.5; i++) {
      await watch(w, Array.from({ length: PRESENCE_USERS_PER_FRAME }, (_, j) => `w${i}-${j}`));
    }
    // 400 watched: 100 more fit, 101 do not
    const over = await w.request({ type: 'presence.watch', id: 'over', users: Array.from({ length: 101 }, (_, j) => `x${j}`) });
    expect(over).toMatchObject({ type: 'error', id: 'over', code: 'too_large' });
    expect(over.message).toContain(String(PRESENCE_USERS_PER_CONNECTION));
    expect((await watch(w, Array.from({ length: 100 }, (_, j) => `x${j}`))).users).toBeDefined();
    const bad = await w.request({ type: 'presence.watch', id: 'bad', users: ['not a user id'] });
    expect(bad).toMatchObject({ type: 'error', id: 'bad', code: 'bad_request' });
  });

  it('PRESENCE_WATCH=shared: only users who share a conversation may be watched (forbidden otherwise, naming them)', async () => {
    const service = await cluster.c.addWs({ PRESENCE_WATCH: 'shared' });
    const i = cluster.c.ws.indexOf(service);
    const [me, friend, roommate, stranger] = [uid('me'), uid('friend'), uid('roommate'), uid('stranger')];
    const m = await connect(me, i);
    const refused = await m.request({ type: 'presence.watch', id: 's-1', users: [friend, stranger] });
    expect(refused).toMatchObject({ type: 'error', id: 's-1', code: 'forbidden' });
    expect(refused.message).toContain(stranger);
    await m.request({ type: 'send', id: 'hi', to: friend, body: 'hi' });
    const room = await m.request({ type: 'room.create', name: 'Shared', members: [roommate] });
    expect(room.type).toBe('room.info');
    const answer = await m.request({ type: 'presence.watch', id: 's-2', users: [friend, roommate, me] });
    expect(answer).toMatchObject({ type: 'presence', id: 's-2' });
    expect(Object.keys(answer.users as object).sort()).toEqual([friend, roommate, me].sort());
    const again = await m.request({ type: 'presence.watch', id: 's-3', users: [stranger] });
    expect(again).toMatchObject({ type: 'error', id: 's-3', code: 'forbidden' });
  });
});

describe('typing', () => {
  it('is relayed live to the other side on another instance, not to the sender, at most 2 per second, and never stored', async () => {
    const [ann, ben] = [uid('ann'), uid('ben')];
    const a = await connect(ann, 0);
    const a2 = await connect(ann, 1);
    const b = await connect(ben, 1);
    for (let i = 0; i < 10; i++) a.send({ type: 'typing', to: ben });
    await b.waitFor((f) => f.type === 'typing', 'typing');
    expect(b.frames.find((f) => f.type === 'typing')).toEqual({ type: 'typing', from: ann, to: ben });
    // a marker sent after the burst travels the same way: anything relayed has arrived by then
    const marker = await a.request({ type: 'send', to: ben, body: 'marker' });
    await b.waitForMessage((m) => m.msgId === marker.msgId);
    expect(b.frames.filter((f) => f.type === 'typing')).toHaveLength(2);
    expect([...a.frames, ...a2.frames].filter((f) => f.type === 'typing' || f.type === 'error')).toEqual([]);
    // once the second has passed, the next one is relayed again (typing until one gets through)
    await eventually(
      () => {
        if (b.frames.filter((f) => f.type === 'typing').length === 2) a.send({ type: 'typing', to: ben });
        expect(b.frames.filter((f) => f.type === 'typing')).toHaveLength(3);
      },
      { timeoutMs: 5000, intervalMs: 200 },
    );
    const sync = await b.request({ type: 'sync' });
    expect(JSON.stringify(sync)).not.toContain('typing');
    const rows = await cluster.c.db.query('SELECT count(*)::int AS n FROM messages WHERE sender = $1', [ann]);
    expect(rows.rows[0].n).toBe(1);
  });

  it("into a room: relayed to the other members' connections; from a non-member or into no room, dropped without an error", async () => {
    const [owner, member, outsider] = [uid('owner'), uid('member'), uid('outsider')];
    const o = await connect(owner, 0);
    const m = await connect(member, 1);
    const x = await connect(outsider, 1);
    const room = (await o.request({ type: 'room.create', name: 'Typing', members: [member] })).room as string;
    o.send({ type: 'typing', room });
    expect(await m.waitFor((f) => f.type === 'typing')).toEqual({ type: 'typing', from: owner, room });
    x.send({ type: 'typing', room });
    x.send({ type: 'typing', room: 'r_nonexistent' });
    const marker = await x.request({ type: 'send', to: member, body: 'marker' });
    await m.waitForMessage((msg) => msg.msgId === marker.msgId);
    expect(m.frames.filter((f) => f.type === 'typing')).toHaveLength(1);
    expect(o.frames.filter((f) => f.type === 'typing')).toHaveLength(0);
    expect(x.frames.filter((f) => f.type === 'error')).toEqual([]);
  });
});
