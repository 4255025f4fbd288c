import { describe, it, expect, afterEach } from 'vitest';
import { request } from 'undici';
import { Writable } from 'node:stream';
import { ProtocolSocket, createLogger } from '@simplechat/shared';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { INTERNAL_TOKEN } from '../../test/helpers';

let c: TestCluster | undefined;
const open: ProtocolSocket[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) s.close();
  await c?.close();
  c = undefined;
});
async function connect(cl: TestCluster, user: string, i = 0): Promise<ProtocolSocket> {
  const s = await cl.connect(user, i);
  open.push(s);
  return s;
}
async function health(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await request(`${url}/health`);
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

describe('when a dependency is down', () => {
  it('without the broker a send is answered unavailable (never a false ack) and /health is 503', async () => {
    c = await startCluster({ wsCount: 1, wsEnv: { AMQP_URL: 'amqp://guest:guest@127.0.0.1:1' } });
    const s = await connect(c, uid('alice'));
    const answer = await s.request({ type: 'send', id: 'u1', to: 'bob', body: 'hello?' });
    expect(answer).toMatchObject({ type: 'error', code: 'unavailable', id: 'u1' });
    expect(answer.message).toMatch(/broker/);
    const h = await health(c.httpUrl());
    expect(h.status).toBe(503);
    expect(h.body).toMatchObject({ status: 'down', dependencies: { rabbitmq: 'down' } });
  });

  it('without storage registered has no cursor, history is unavailable, a send that needs new positions is unavailable and /health is degraded', async () => {
    c = await startCluster({ wsCount: 1, persist: false });
    const alice = uid('alice');
    const s = await ProtocolSocket.open(c.wsUrl());
    open.push(s);
    const reg = await s.register(await c.token(alice));
    expect(reg.type).toBe('registered');
    expect(reg).not.toHaveProperty('cursor');
    // The client learns what to do, not where SvPersist runs.
    expect(await s.request({ type: 'history', id: 'h1', with: 'bob' })).toEqual({ type: 'error', code: 'unavailable', id: 'h1', message: 'message storage unavailable (history could not be read); retry later' });
    expect(await s.request({ type: 'sync', id: 's1' })).toEqual({ type: 'error', code: 'unavailable', id: 's1', message: 'message storage unavailable (sync could not be read); retry later' });
    // Positions come in blocks from storage: a conversation without one left waits for it (retry with the same id).
    expect(await s.request({ type: 'send', id: 'p1', to: alice, body: 'needs a position' })).toEqual({ type: 'error', code: 'unavailable', id: 'p1', message: 'message positions unavailable (storage does not answer); retry with the same id' });
    const h = await health(c.httpUrl());
    expect(h.status).toBe(200);
    expect(h.body).toMatchObject({ status: 'degraded', dependencies: { persist: 'down', rabbitmq: 'up' } });
  });

  it('without SvDiscover same-instance delivery goes on, and an instance that never reached it says so', async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    c = await startCluster({ wsCount: 1, wsEnv: { DISCOVER_URL: 'http://127.0.0.1:1', REQUEST_TIMEOUT_MS: '500' }, log: createLogger('test', 'info', sink) });
    // From its first failed call, not only after a change from reachable.
    expect(lines.filter((l) => l.msg === 'SvDiscover unreachable; same-instance delivery continues, other messages reach clients by sync')).toEqual([expect.objectContaining({ level: 'warn', url: 'http://127.0.0.1:1' })]);
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(c, alice);
    const b = await connect(c, bob);
    const ack = await a.request({ type: 'send', id: 'd1', to: bob, body: 'local' });
    expect(ack.type).toBe('ack');
    await b.waitForMessage((m) => m.msgId === ack.msgId);
    const h = await health(c.httpUrl());
    expect(h.status).toBe(200);
    expect(h.body).toMatchObject({ status: 'degraded', dependencies: { discover: 'down' } });
  });

  it('a peer instance that cannot be reached does not stall the sender; the message is stored and reachable by sync', async () => {
    c = await startCluster({ wsCount: 1, wsEnv: { FORWARD_TIMEOUT_MS: '300' } });
    const ghost = uid('ghost');
    // A dead instance still holding a lease and a claim on the recipient.
    const auth = { authorization: `Bearer ${INTERNAL_TOKEN}`, 'content-type': 'application/json' };
    const deadUrl = 'http://127.0.0.1:1';
    await (await request(`${c.discoverUrl}/internal/instances/ws-dead`, { method: 'PUT', headers: auth, body: JSON.stringify({ url: deadUrl }) })).body.dump();
    await (await request(`${c.discoverUrl}/internal/claims`, { method: 'POST', headers: auth, body: JSON.stringify({ instanceId: 'ws-dead', url: deadUrl, add: [ghost] }) })).body.dump();
    const alice = uid('alice');
    const a = await connect(c, alice);
    const acks = await Promise.all([1, 2, 3].map((i) => a.request({ type: 'send', id: `g${i}`, to: ghost, body: `to a dead peer ${i}` })));
    expect(acks.every((x) => x.type === 'ack')).toBe(true);
    // the instance still serves: a local round trip works
    const self = await a.request({ type: 'send', id: 'g-self', to: alice, body: 'still alive' });
    await a.waitForMessage((m) => m.msgId === self.msgId);
    const g = await connect(c, ghost);
    const synced = await (async () => {
      for (let i = 0; i < 100; i++) {
        const page = await g.request({ type: 'sync', after: '0' });
        const ids = (page.messages as { msgId: string }[]).map((m) => m.msgId);
        if (acks.every((x) => ids.includes(x.msgId as string))) return ids;
        await new Promise((r) => setTimeout(r, 50));
      }
      return [];
    })();
    // sync returns storage order, which need not be msgId order
    expect([...synced].sort()).toEqual(acks.map((x) => x.msgId as string).sort());
  });
});
