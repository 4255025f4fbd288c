import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { request } from 'undici';
import { ProtocolSocket } from '@simplechat/shared';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { INTERNAL_TOKEN } from '../../test/helpers';

let c: TestCluster;
const open: ProtocolSocket[] = [];
async function raw(i = 0, headers?: Record<string, string>): Promise<ProtocolSocket> {
  const s = await ProtocolSocket.open(c.wsUrl(i), { headers });
  open.push(s);
  return s;
}
async function connect(user: string, i = 0): Promise<ProtocolSocket> {
  const s = await c.connect(user, i);
  open.push(s);
  return s;
}
function unsignedToken(payload: Record<string, unknown>, header: Record<string, unknown> = { alg: 'none' }): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64(header)}.${b64(payload)}.`;
}

beforeAll(async () => {
  c = await startCluster({
    wsCount: 1,
    wsEnv: { MAX_FRAME_BYTES: '2048', MAX_BODY_CHARS: '100', MAX_CONNECTIONS_PER_USER: '2', MAX_CONNECTIONS_PER_IP: '40' },
  });
  // a second instance with a tight rate limit
  await c.addWs({ RATE_LIMIT_PER_SEC: '2', RATE_LIMIT_BURST: '3', INSTANCE_ID: 'ws-limited' });
});
afterAll(async () => {
  for (const s of open) s.close();
  await c?.close();
});

describe('register and identity', () => {
  const badTokens: [string, () => Promise<string>][] = [
    ['signed with another secret', () => c.token('alice', { secret: 'another-secret-another-secret-0000' })],
    ['expired', () => c.token('alice', { ttlSec: -60 })],
    ['expired a moment ago (within the clock tolerance for nbf)', () => c.token('alice', { ttlSec: -2 })],
    ['alg none', async () => unsignedToken({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 600 })],
    ['with a sub breaking the user id rules', () => c.token('not a valid id!')],
    ['garbage', async () => 'not-a-jwt'],
  ];
  for (const [name, make] of badTokens) {
    it(`a token ${name} gets error unauthorized then close 4401`, async () => {
      const s = await raw();
      const err = await s.register(await make());
      expect(err).toMatchObject({ type: 'error', code: 'unauthorized' });
      expect(await s.waitForClose()).toBe(4401);
    });
  }

  it('a register without a token gets unauthorized and 4401', async () => {
    const s = await raw();
    s.send({ type: 'register' });
    expect(await s.waitFor((f) => f.type === 'error')).toMatchObject({ code: 'unauthorized' });
    expect(await s.waitForClose()).toBe(4401);
  });

  it('a register with a good token but a wrongly typed id gets unauthorized and the connection stays open', async () => {
    const s = await raw();
    s.send({ type: 'register', id: 42, token: await c.token(uid('typo')) });
    expect(await s.waitFor((f) => f.type === 'error')).toMatchObject({ code: 'unauthorized', message: expect.stringMatching(/'id'/) });
    const reg = await s.register(await c.token(uid('typo')));
    expect(reg.type).toBe('registered');
    expect(s.closeCode).toBeUndefined();
  });

  it('no register in time: error unauthorized then close 4408', async () => {
    // an instance of its own with a short REGISTER_TIMEOUT_MS (the others keep the default, so
    // their tests have time to register on a slow machine)
    const short = await c.addWs({ REGISTER_TIMEOUT_MS: '400', INSTANCE_ID: 'ws-register-timeout' });
    const s = await ProtocolSocket.open(`ws://127.0.0.1:${short.port}/ws`);
    open.push(s);
    expect(await s.waitFor((f) => f.type === 'error')).toMatchObject({ code: 'unauthorized' });
    expect(await s.waitForClose()).toBe(4408);
  });

  it('any other frame before register gets unauthorized and the connection stays open', async () => {
    const s = await raw();
    const err = await s.request({ type: 'send', id: 'early', to: 'bob', body: 'hi' });
    expect(err).toMatchObject({ type: 'error', code: 'unauthorized', id: 'early' });
    s.sendRaw('not json');
    await s.waitFor((f) => f.type === 'error' && f.id === undefined);
    const reg = await s.register(await c.token(uid('late')));
    expect(reg.type).toBe('registered');
  });

  it('a second register gets bad_request', async () => {
    const s = await connect(uid('alice'));
    const err = await s.request({ type: 'register', token: await c.token('someone') });
    expect(err).toMatchObject({ type: 'error', code: 'bad_request' });
  });

  it('a forged from field changes nothing: the message is from the token\'s user', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice);
    const b = await connect(bob);
    const ack = await a.request({ type: 'send', id: 'forge', to: bob, body: 'hi', from: 'mallory' });
    expect((await b.waitForMessage((m) => m.msgId === ack.msgId)).from).toBe(alice);
  });

  it('refresh extends the connection; a refresh for another user or with a bad token is refused and keeps the identity', async () => {
    const alice = uid('alice');
    const s = await connect(alice);
    const ok = await s.request({ type: 'refresh', token: await c.token(alice, { ttlSec: 7200 }) });
    expect(ok).toMatchObject({ type: 'refreshed' });
    expect(ok.exp).toBeGreaterThan(Date.now() / 1000 + 7000);
    expect(await s.request({ type: 'refresh', token: await c.token(uid('mallory')) })).toMatchObject({ type: 'error', code: 'unauthorized' });
    expect(await s.request({ type: 'refresh', token: 'garbage' })).toMatchObject({ type: 'error', code: 'unauthorized' });
    // a missing, empty or non-string token is a bad token too
    for (const token of [undefined, '', 42]) {
      expect(await s.request({ type: 'refresh', token })).toMatchObject({ type: 'error', code: 'unauthorized', message: expect.stringMatching(/^refresh refused: field 'token' (is required|must not be empty|must be a string); the connection keeps its current token$/) });
    }
    expect(await s.request({ type: 'refresh', token: await c.token(alice, { ttlSec: -2 }) })).toMatchObject({ type: 'error', code: 'unauthorized', message: expect.stringMatching(/expired/) });
    expect(await s.request({ type: 'send', id: 'still', to: alice, body: 'x' })).toMatchObject({ type: 'ack' });
  });

  it('when the token expires without refresh the server sends unauthorized and closes 4401', async () => {
    const s = await raw();
    // exp is in whole seconds: 2 leaves it between 1 and 2 s to live, so it registers first
    const reg = await s.register(await c.token(uid('short'), { ttlSec: 2 }));
    expect(reg.type).toBe('registered');
    expect(await s.waitFor((f) => f.type === 'error', 'expiry', 8000)).toMatchObject({ code: 'unauthorized', message: expect.stringMatching(/expired/) });
    expect(await s.waitForClose(8000)).toBe(4401);
  });

  it('POST /dev/token issues a token in development and answers 400 to a bad userId', async () => {
    const good = await request(`${c.httpUrl()}/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ userId: 'alice' }) });
    expect(good.statusCode).toBe(200);
    expect(((await good.body.json()) as { token: string }).token.split('.')).toHaveLength(3);
    const bad = await request(`${c.httpUrl()}/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ userId: 'no spaces' }) });
    expect(bad.statusCode).toBe(400);
    expect(await bad.body.json()).toHaveProperty('error');
  });
});

describe('keep-alive', () => {
  it('the server pings every connection: one that answers stays, one that stops answering is terminated', async () => {
    // an instance of its own, pinging every 3 s (the others keep the default)
    await c.addWs({ PING_INTERVAL_MS: '3000', INSTANCE_ID: 'ws-ping' });
    const pinging = c.ws.length - 1;
    const mute = await ProtocolSocket.open(c.wsUrl(pinging), { autoPong: false });
    open.push(mute);
    expect((await mute.register(await c.token(uid('mute')))).type).toBe('registered');
    const live = await connect(uid('live'), pinging);
    expect(await mute.waitForClose(15_000)).toBe(1006); // terminated, no close frame
    expect(live.closeCode).toBeUndefined();
    expect(await live.request({ type: 'send', id: 'still-here', to: 'bob', body: 'x' })).toMatchObject({ type: 'ack' });
  }, 30_000);
});

describe('bad frames and limits', () => {
  it('invalid JSON, non-objects, unknown types, binary frames and wrong fields get bad_request and the connection stays', async () => {
    const s = await connect(uid('alice'));
    const before = s.frames.length;
    s.sendRaw('{nope');
    s.sendRaw('[1,2]');
    s.send({ type: 'teleport', id: 't1' });
    s.sendRaw(Buffer.from([1, 2, 3]), true);
    s.send({ type: 'send', id: 'w1', to: 42, body: 'x' });
    s.send({ type: 'history', id: 'w2', with: 'bob', limit: 1000 });
    s.send({ type: 'send', id: 'w3', to: 'bob', body: 'nul\u0000inside' });
    s.send({ type: 'send', id: 'w4', to: 'bob', body: 'lone \ud800 surrogate' });
    const errs = await (async () => {
      for (;;) {
        const e = s.frames.slice(before).filter((f) => f.type === 'error');
        if (e.length >= 8) return e;
        await s.waitFor((f) => f.type === 'error', 'errors', 5000, s.frames.length);
      }
    })();
    expect(errs.every((e) => e.code === 'bad_request')).toBe(true);
    expect(errs.filter((e) => e.id).map((e) => e.id).sort()).toEqual(['t1', 'w1', 'w2', 'w3', 'w4']);
    expect(await s.request({ type: 'send', id: 'fine', to: 'bob', body: 'still here' })).toMatchObject({ type: 'ack' });
  });

  it('a sync cursor past any position, and a history before that cannot be a msgId, get bad_request with their id', async () => {
    const s = await connect(uid('alice'));
    expect(await s.request({ type: 'sync', after: '9999999999999999999' })).toMatchObject({ type: 'error', code: 'bad_request', message: expect.stringMatching(/after/) });
    expect(await s.request({ type: 'history', with: 'bob', before: 'a\u0000b' })).toMatchObject({ type: 'error', code: 'bad_request', message: expect.stringMatching(/before/) });
    expect(await s.request({ type: 'history', with: 'bob', before: 'two words' })).toMatchObject({ type: 'error', code: 'bad_request' });
    expect(await s.request({ type: 'sync', after: '9223372036854775807' })).toMatchObject({ type: 'sync', messages: [] });
  });

  it('a body longer than MAX_BODY_CHARS gets too_large; exactly the limit in emoji is fine', async () => {
    const s = await connect(uid('alice'));
    expect(await s.request({ type: 'send', id: 'big', to: 'bob', body: 'x'.repeat(101) })).toMatchObject({ type: 'error', code: 'too_large', id: 'big' });
    expect(await s.request({ type: 'send', id: 'emoji', to: 'bob', body: '😀'.repeat(100) })).toMatchObject({ type: 'ack' });
  });

  it('a frame larger than MAX_FRAME_BYTES closes with 1009', async () => {
    const s = await connect(uid('alice'));
    s.send({ type: 'send', id: 'huge', to: 'bob', body: 'y'.repeat(3000) });
    expect(await s.waitForClose()).toBe(1009);
  });

  it('more than 10 bad frames within a minute closes with 1008', async () => {
    const s = await connect(uid('alice'));
    for (let i = 0; i < 11; i++) s.sendRaw('bad');
    expect(await s.waitForClose()).toBe(1008);
  });

  it('sending past the rate gets rate_limited with retryAfterMs while another user is still served', async () => {
    const alice = uid('alice');
    const a = await connect(alice, 1);
    const other = await connect(uid('other'), 1);
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => a.request({ type: 'send', id: `r${i}`, to: 'bob', body: 'spam' })));
    const limited = answers.filter((f) => f.type === 'error');
    expect(limited.length).toBeGreaterThan(0);
    expect(limited[0]).toMatchObject({ code: 'rate_limited' });
    expect(limited[0]?.retryAfterMs).toBeGreaterThan(0);
    expect(await other.request({ type: 'send', id: 'o1', to: 'bob', body: 'unaffected' })).toMatchObject({ type: 'ack' });
  });

  it('too many connections for one user: error then close 4429', async () => {
    const bob = uid('bob');
    await connect(bob);
    await connect(bob);
    const third = await raw();
    const err = await third.register(await c.token(bob));
    expect(err).toMatchObject({ type: 'error' });
    expect(await third.waitForClose()).toBe(4429);
  });

  it('too many connections from one address are refused at upgrade with HTTP 429', async () => {
    const extra: ProtocolSocket[] = [];
    let refused: unknown;
    for (let i = 0; i < 60 && !refused; i++) {
      try {
        extra.push(await raw());
      } catch (err) {
        refused = err;
      }
    }
    for (const s of extra) s.close();
    expect((refused as { statusCode?: number }).statusCode).toBe(429);
  });
});

describe('origins, health and internal endpoints', () => {
  it('GET /client serves the test client on the WebSocket port', async () => {
    const res = await request(`${c.httpUrl()}/client`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/text\/html/);
    expect(await res.body.text()).toMatch(/<html/i);
  });

  it('a browser Origin not allowed is refused with 403; localhost is allowed in development; no Origin is allowed', async () => {
    await expect(raw(0, { origin: 'https://evil.example' })).rejects.toMatchObject({ statusCode: 403 });
    (await raw(0, { origin: 'http://localhost:5173' })).close();
    (await raw(0)).close();
  });

  it("outside development only ALLOWED_ORIGINS and the instance's own origin (its /client page) may open /ws", async () => {
    const prod = await c.addWs({ ENVIRONMENT: 'test', ALLOWED_ORIGINS: 'https://chat.example.com' });
    const url = `ws://127.0.0.1:${prod.port}/ws`;
    const open = async (origin?: string) => (await ProtocolSocket.open(url, { headers: origin ? { origin } : {} })).close();
    await open(`http://127.0.0.1:${prod.port}`);
    await open('https://chat.example.com');
    await open();
    for (const origin of ['http://localhost:5173', `http://127.0.0.1:${prod.port + 1}`, `https://127.0.0.1:${prod.port}.evil.example`, 'null']) {
      await expect(open(origin)).rejects.toMatchObject({ statusCode: 403 });
    }
  });

  it('/health reports ok with every dependency up', async () => {
    const res = await request(`${c.httpUrl()}/health`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toMatchObject({ status: 'ok', service: 'SvWebsocket', dependencies: { rabbitmq: 'up', redis: 'up', discover: 'up', persist: 'up' } });
  });

  it('/internal/deliver refuses a missing or wrong token with 401, and a malformed body with 400', async () => {
    const body = JSON.stringify({ items: [{ users: ['bob'], frame: '{"type":"message"}' }] });
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: INTERNAL_TOKEN }]) {
      const res = await request(`${c.httpUrl()}/internal/deliver`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
      expect(res.statusCode).toBe(401);
      await res.body.dump();
    }
    const unknown = await request(`${c.httpUrl()}/internal/anything`, { method: 'GET' });
    expect(unknown.statusCode).toBe(401);
    await unknown.body.dump();
    const bad = await request(`${c.httpUrl()}/internal/deliver`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${INTERNAL_TOKEN}` }, body: JSON.stringify({ items: [{ users: ['not valid!'], frame: 1 }] }) });
    expect(bad.statusCode).toBe(400);
    expect(await bad.body.json()).toHaveProperty('error');
  });

  it('a forged forward without the token makes no message appear', async () => {
    const bob = uid('bob');
    const b = await connect(bob);
    const res = await request(`${c.httpUrl()}/internal/deliver`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ users: [bob], frame: JSON.stringify({ type: 'message', msgId: 'FAKE', from: 'admin', to: bob, body: 'click here', ts: 1 }) }] }) });
    expect(res.statusCode).toBe(401);
    await res.body.dump();
    const fence = await b.request({ type: 'send', id: 'fence', to: bob, body: 'fence' });
    await b.waitForMessage((m) => m.msgId === fence.msgId);
    expect(b.messages().some((m) => m.msgId === 'FAKE')).toBe(false);
  });
});
