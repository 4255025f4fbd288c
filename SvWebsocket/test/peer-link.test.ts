/**
 * The peer link between SvWebsocket instances: cross-instance frames travel
 * over one WebSocket per peer at /internal/link, a tick's frames as one
 * batch, acked by the receiver. Against a real two-instance cluster, plus a
 * real SvWebsocket process (node SvWebsocket/dist/main.js) as a peer that is
 * stopped, killed and restarted.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { createServer, type Server } from 'node:net';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { AddressInfo } from 'node:net';
import WebSocket from 'ws';
import { ProtocolSocket, createLogger, type InstanceRef } from '@simplechat/shared';
import { startCluster, uid, wsProcessEnv, type TestCluster } from '../../test/cluster';
import { eventually, INTERNAL_TOKEN } from '../../test/helpers';
import { scrape, sample } from '../../test/metrics';
import { createConnectionRegistry } from '../src/connections';
import { createRouter } from '../src/router';

const ROOT = resolve(__dirname, '..', '..');
const FORWARD_TIMEOUT_MS = 2000;
const OLD_TOKEN = 'test-internal-token-before-rotation';

let c: TestCluster;
const open: ProtocolSocket[] = [];
const rawLinks: WebSocket[] = [];
const children: ChildProcess[] = [];
const log = createLogger('test', (process.env.TEST_LOG_LEVEL as 'info') ?? 'silent');

async function connect(user: string, i = 0): Promise<ProtocolSocket> {
  const s = await c.connect(user, i);
  open.push(s);
  return s;
}
const delta = (before: string, after: string, name: string, labels?: Record<string, string>) => (sample(after, name, labels) ?? 0) - (sample(before, name, labels) ?? 0);
const message = (to: string, msgId: string) => JSON.stringify({ type: 'message', msgId, from: 'peer-test', to, body: msgId, ts: Date.now() });

/** An upgrade request to an /internal path; the status (101 when it was accepted) and the body of a refusal. */
function upgrade(port: number, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      path,
      headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', ...headers },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolvePromise({ status: res.statusCode ?? 0, body: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A peer link opened by hand, as a peer's router would. */
async function openLink(port: number, token = INTERNAL_TOKEN): Promise<{ ws: WebSocket; acks: number[]; closed(): Promise<{ code: number; reason: string }> }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/internal/link`, { headers: { authorization: `Bearer ${token}` } });
  rawLinks.push(ws);
  const acks: number[] = [];
  ws.on('message', (data) => acks.push((JSON.parse(data.toString()) as { ack: number }).ack));
  const onClose = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  const closed = () =>
    Promise.race([onClose, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the link was not closed within 5 s')), 5000).unref())]);
  await new Promise<void>((r, reject) => {
    ws.once('open', () => r());
    ws.once('error', reject);
  });
  return { ws, acks, closed };
}

/** A router of its own (the one inside an instance is not reachable from a test), sending to real peers. */
function standaloneRouter(where: (user: string) => InstanceRef[]) {
  const batches: { frames: number; ok: boolean }[] = [];
  const failures: { instanceId: string; users: string[] }[] = [];
  const router = createRouter({
    registry: createConnectionRegistry(),
    discovery: {
      lookup: async (users) => new Map(users.map((u) => [u, where(u)])),
      reportFailedDelivery: (instanceId, users) => void failures.push({ instanceId, users: [...users] }),
    },
    instanceId: 'test-router',
    internalToken: INTERNAL_TOKEN,
    forwardTimeoutMs: FORWARD_TIMEOUT_MS,
    log,
    metrics: { forwarded: (frames, _seconds, ok) => void batches.push({ frames, ok }) },
  });
  return { router, batches, failures };
}

/** A real SvWebsocket process on this cluster; resolves with its port once it listens. */
function startPeerProcess(instanceId: string, port = 0): Promise<{ proc: ChildProcess; port: number }> {
  const proc = spawn(process.execPath, [resolve(ROOT, 'SvWebsocket/dist/main.js')], {
    cwd: ROOT,
    env: wsProcessEnv(c, {
      WS_PORT: String(port),
      INSTANCE_ID: instanceId,
      HEARTBEAT_MS: '500',
      RATE_LIMIT_PER_SEC: '1000',
      RATE_LIMIT_BURST: '1000',
    }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  const lines: string[] = [];
  return new Promise((resolvePort, reject) => {
    proc.once('exit', (code) => reject(new Error(`SvWebsocket exited with ${code} before listening: ${lines.join('\n')}`)));
    createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on('line', (line) => lines.push(line));
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      lines.push(line);
      try {
        const rec = JSON.parse(line) as { msg?: string; port?: number };
        if (rec.msg === 'SvWebsocket listening' && rec.port) resolvePort({ proc, port: rec.port });
      } catch {
        // not a log line
      }
    });
  });
}

function exited(proc: ChildProcess): Promise<void> {
  return proc.exitCode !== null || proc.signalCode !== null ? Promise.resolve() : new Promise((r) => proc.once('exit', () => r()));
}

/** Every msgId bob can sync from `cursor`, following more. */
async function syncAll(s: ProtocolSocket, cursor: string): Promise<Set<string>> {
  const ids = new Set<string>();
  for (;;) {
    const page = await s.request({ type: 'sync', after: cursor, limit: 500 });
    for (const m of page.messages as { msgId: string }[]) ids.add(m.msgId);
    cursor = page.cursor as string;
    if (!page.more) return ids;
  }
}

beforeAll(async () => {
  // A long lease: a stopped or killed peer stays where SvDiscover says, so forwards to it really fail.
  c = await startCluster({ wsCount: 2, leaseMs: 10_000, wsEnv: { FORWARD_TIMEOUT_MS: String(FORWARD_TIMEOUT_MS) } });
});
afterAll(async () => {
  for (const p of children) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await Promise.all(children.map(exited));
  for (const s of open) s.close();
  for (const ws of rawLinks) ws.terminate();
  await c?.close();
});

describe('peer link', () => {
  it('a message to a user on another instance arrives over the peer link, not as an HTTP request', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const before = await Promise.all([scrape(c.httpUrl(0)), scrape(c.httpUrl(1))]);
    const ack = await a.request({ type: 'send', id: 'l1', to: bob, body: 'over the link' });
    expect(await b.waitForMessage((m) => m.msgId === ack.msgId)).toMatchObject({ from: alice, body: 'over the link' });
    await eventually(async () => {
      const [ws1, ws2] = await Promise.all([scrape(c.httpUrl(0)), scrape(c.httpUrl(1))]);
      expect(delta(before[0] as string, ws1, 'simplechat_forwards_total', { result: 'ok' })).toBeGreaterThanOrEqual(1);
      expect(delta(before[0] as string, ws1, 'simplechat_forwards_total', { result: 'failed' })).toBe(0);
      expect(delta(before[1] as string, ws2, 'simplechat_peer_link_frames_received_total')).toBeGreaterThanOrEqual(1);
      expect(delta(before[1] as string, ws2, 'simplechat_http_requests_total', { route: '/internal/deliver' })).toBe(0);
    });
  });

  it('an upgrade to /internal/link without the token or with a wrong one is refused with 401 and a one-line JSON error, whatever the path case', async () => {
    const port = c.ws[1]?.port as number;
    const before = await scrape(c.httpUrl(1));
    for (const path of ['/internal/link', '/INTERNAL/Link/', '/internal/link?x=1', '/internal/other']) {
      for (const headers of [{}, { authorization: 'Bearer not-the-token' }, { authorization: INTERNAL_TOKEN }] as Record<string, string>[]) {
        const res = await upgrade(port, path, headers);
        expect(res.status, `${path} ${JSON.stringify(headers)}`).toBe(401);
        expect(res.body).not.toContain('\n');
        expect(JSON.parse(res.body)).toEqual({ error: expect.stringMatching(/^unauthorized/) });
      }
    }
    expect(delta(before, await scrape(c.httpUrl(1)), 'simplechat_internal_auth_refused_total')).toBeGreaterThanOrEqual(12);
    // With the token: the link path in any case is accepted, other internal paths are not WebSocket endpoints.
    expect((await upgrade(port, '/Internal/LINK/', { authorization: `Bearer ${INTERNAL_TOKEN}` })).status).toBe(101);
    expect((await upgrade(port, '/internal/other', { authorization: `Bearer ${INTERNAL_TOKEN}` })).status).toBe(404);
    // During a token rotation the previous token still opens a link.
    const rotating = await c.addWs({ INSTANCE_ID: 'ws-rotating', INTERNAL_TOKEN_PREVIOUS: OLD_TOKEN });
    expect((await upgrade(rotating.port, '/internal/link', { authorization: `Bearer ${OLD_TOKEN}` })).status).toBe(101);
    expect((await upgrade(rotating.port, '/internal/link', { authorization: `Bearer ${INTERNAL_TOKEN}` })).status).toBe(101);
    expect((await upgrade(c.ws[1]?.port as number, '/internal/link', { authorization: `Bearer ${OLD_TOKEN}` })).status).toBe(401);
  });

  it('a valid batch is delivered and acked; a malformed message closes that link with 1008 and a reason, and other traffic goes on', async () => {
    const port = c.ws[1]?.port as number;
    const bob = uid('bob');
    const b = await connect(bob, 1);
    const good = await openLink(port);
    good.ws.send(JSON.stringify({ seq: 1, items: [{ users: [bob], frame: message(bob, 'by-hand-1') }] }));
    await b.waitForMessage((m) => m.msgId === 'by-hand-1');
    await eventually(() => expect(good.acks).toEqual([1]));

    const bad: [string | Buffer, RegExp][] = [
      ['not json', /not JSON/],
      [JSON.stringify({ seq: 1, items: [{ users: ['not a user id!'], frame: message(bob, 'x') }] }), /^invalid batch: items\.0\.users\.0/],
      [JSON.stringify({ items: [{ users: [bob], frame: message(bob, 'x') }] }), /^invalid batch: seq/],
      [JSON.stringify({ seq: 'one', items: [] }), /^invalid batch: seq/],
      [Buffer.from(JSON.stringify({ seq: 1, items: [] })), /JSON text/],
    ];
    for (const [data, reason] of bad) {
      const link = await openLink(port);
      link.ws.send(data, { binary: Buffer.isBuffer(data) });
      const closed = await link.closed();
      expect(closed.code, String(data)).toBe(1008);
      expect(closed.reason).toMatch(reason);
    }
    // seq must increase on a link: a replayed batch is refused, and nothing of it is delivered
    good.ws.send(JSON.stringify({ seq: 1, items: [{ users: [bob], frame: message(bob, 'replayed') }] }));
    expect(await good.closed()).toEqual({ code: 1008, reason: 'seq 1 after 1: seq must increase' });

    // Cross-instance traffic is untouched.
    const alice = uid('alice');
    const a = await connect(alice, 0);
    const before = await scrape(c.httpUrl(0));
    const ack = await a.request({ type: 'send', id: 'after-bad', to: bob, body: 'still flowing' });
    await b.waitForMessage((m) => m.msgId === ack.msgId);
    expect(b.messages().some((m) => m.msgId === 'replayed')).toBe(false);
    expect(delta(before, await scrape(c.httpUrl(0)), 'simplechat_forwards_total', { result: 'failed' })).toBe(0);
  });

  it('frames routed to a peer within one tick go out as one batch and arrive in one message', async () => {
    const N = 500;
    const bob = uid('bob');
    const b = await connect(bob, 1);
    const peer = { instanceId: c.ws[1]?.instanceId as string, url: c.httpUrl(1) };
    const { router, batches, failures } = standaloneRouter(() => [peer]);
    const before = await scrape(c.httpUrl(1));
    for (let i = 0; i < N; i++) router.route(message(bob, `tick-${i}`), [bob]);
    await eventually(() => expect(b.messages().filter((m) => m.msgId.startsWith('tick-'))).toHaveLength(N));
    await eventually(() => expect(batches).toEqual([{ frames: N, ok: true }]));
    const after = await scrape(c.httpUrl(1));
    expect(delta(before, after, 'simplechat_peer_link_batches_received_total')).toBe(1);
    expect(delta(before, after, 'simplechat_peer_link_frames_received_total')).toBe(N);
    expect(failures).toEqual([]);
    await router.close();
  });

  it('under a burst of sends, many frames travel in few batches', async () => {
    const N = 200;
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const before = await Promise.all([scrape(c.httpUrl(0)), scrape(c.httpUrl(1))]);
    const acks = await Promise.all(Array.from({ length: N }, (_, i) => a.request({ type: 'send', id: `burst-${i}`, to: bob, body: `burst ${i}` })));
    expect(acks.every((f) => f.type === 'ack')).toBe(true);
    await eventually(() => expect(b.messages().length).toBe(N));
    await eventually(async () => {
      const [ws1, ws2] = await Promise.all([scrape(c.httpUrl(0)), scrape(c.httpUrl(1))]);
      const batchesSent = delta(before[0] as string, ws1, 'simplechat_forwards_total', { result: 'ok' });
      expect(delta(before[0] as string, ws1, 'simplechat_forward_frames_total')).toBe(N);
      expect(batchesSent).toBeGreaterThanOrEqual(1);
      // frames of one tick share a batch: far fewer batches than frames even when acks spread the burst
      expect(batchesSent).toBeLessThanOrEqual(N / 2);
      expect(delta(before[1] as string, ws2, 'simplechat_peer_link_batches_received_total')).toBe(batchesSent);
      expect(delta(before[1] as string, ws2, 'simplechat_peer_link_frames_received_total')).toBe(N);
    });
  });

  it('closing a router waits until the batches it sent are acked', async () => {
    const N = 50;
    const bob = uid('bob');
    const b = await connect(bob, 1);
    const peer = { instanceId: c.ws[1]?.instanceId as string, url: c.httpUrl(1) };
    const { router, batches, failures } = standaloneRouter(() => [peer]);
    for (let i = 0; i < N; i++) router.route(message(bob, `closing-${i}`), [bob]);
    // close once the lookups have answered (frames routed after close() are reported failed instead)
    await new Promise((r) => setImmediate(r));
    await router.close();
    expect(batches.reduce((n, x) => n + (x.ok ? x.frames : 0), 0)).toBe(N);
    expect(failures).toEqual([]);
    await eventually(() => expect(b.messages().filter((m) => m.msgId.startsWith('closing-'))).toHaveLength(N));
  });

  it('a peer that refuses every connection: its frames are reported failed at once, and connects back off instead of one per tick', async () => {
    let connects = 0;
    const dead: Server = createServer((s) => {
      connects += 1;
      s.destroy();
    });
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
    const peer = { instanceId: 'ws-dead', url: `http://127.0.0.1:${(dead.address() as AddressInfo).port}` };
    const { router, batches, failures } = standaloneRouter(() => [peer]);
    const users = Array.from({ length: 150 }, (_, i) => uid(`gone${i}`));
    for (const u of users) {
      router.route(message(u, `dead-${u}`), [u]);
      await new Promise((r) => setTimeout(r, 10));
    }
    await router.close();
    dead.close();
    // every frame counted as a failed batch and reported for a sync hint, none lost silently
    expect(batches.every((x) => !x.ok)).toBe(true);
    expect(batches.reduce((n, x) => n + x.frames, 0)).toBe(users.length);
    expect(failures.every((f) => f.instanceId === 'ws-dead')).toBe(true);
    expect(new Set(failures.flatMap((f) => f.users))).toEqual(new Set(users));
    // 150 ticks over ~1.5 s: a handful of attempts (100, 200, 400, 800 ms pauses), not 150
    expect(connects).toBeGreaterThanOrEqual(2);
    expect(connects).toBeLessThanOrEqual(10);
  });

  it('a peer that stalls past the forward timeout still hands on, live, the frames already on the wire once it resumes', { timeout: 30_000 }, async () => {
    const peer = await startPeerProcess('ws-slow');
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await ProtocolSocket.open(`ws://127.0.0.1:${peer.port}/ws`);
    open.push(b);
    await b.register(await c.token(bob));
    const send = async (id: string) => {
      const ack = await a.request({ type: 'send', id, to: bob, body: id });
      expect(ack.type).toBe('ack');
      return ack.msgId as string;
    };
    await eventually(async () => {
      const msgId = await send(`up-${Date.now()}`);
      await b.waitForMessage((m) => m.msgId === msgId, 1000);
    });
    const before = await scrape(c.httpUrl(0));
    peer.proc.kill('SIGSTOP');
    const stalled = await send('stalled');
    // The batch counts as failed (its recipient gets a sync hint) once FORWARD_TIMEOUT_MS passed ...
    await eventually(async () => expect(delta(before, await scrape(c.httpUrl(0)), 'simplechat_forwards_total', { result: 'failed' })).toBeGreaterThanOrEqual(1));
    // ... and the peer, once resumed, still delivers what reached it before the link was dropped (bob may see it again by sync; clients dedupe by msgId).
    peer.proc.kill('SIGCONT');
    const got = await b.waitForMessage((m) => m.msgId === stalled, 5000);
    expect(got.body).toBe('stalled');
    peer.proc.kill('SIGTERM');
    await exited(peer.proc);
  });

  it('a peer process that hangs, then is killed and restarted: the sender reports failures, recipients catch up by sync (hinted), and the restarted peer is linked again', { timeout: 60_000 }, async () => {
    const first = await startPeerProcess('ws-peer');
    const peerUrl = `http://127.0.0.1:${first.port}`;
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await ProtocolSocket.open(`ws://127.0.0.1:${first.port}/ws`);
    open.push(b);
    const reg = await b.register(await c.token(bob));
    expect(reg).toMatchObject({ type: 'registered', instanceId: 'ws-peer' });
    const cursor = reg.cursor as string;
    const sent: string[] = [];
    const send = async (id: string) => {
      const ack = await a.request({ type: 'send', id, to: bob, body: id });
      expect(ack.type).toBe('ack');
      sent.push(ack.msgId as string);
      return ack.msgId as string;
    };
    // The link is up once one message made it across.
    await eventually(async () => {
      const id = await send(`up-${sent.length}`);
      await b.waitForMessage((m) => m.msgId === id, 1000);
    });
    // A new connection gets one sync.hint after the discovery cache time; from then on, a hint comes from a failed forward.
    await b.waitFor((f) => f.type === 'sync.hint', 'the new-connection hint', 5000);
    const hintsBefore = b.frames.length;

    // 1. The peer hangs: its batches are not acked within FORWARD_TIMEOUT_MS and count as failed.
    let before = await scrape(c.httpUrl(0));
    first.proc.kill('SIGSTOP');
    const whileStopped = [await send('stopped-0'), await send('stopped-1')];
    await eventually(async () => expect(delta(before, await scrape(c.httpUrl(0)), 'simplechat_forwards_total', { result: 'failed' })).toBeGreaterThanOrEqual(1));
    await send('stopped-2');
    first.proc.kill('SIGCONT');
    // SvDiscover kept a hint for bob: the peer passes it on with its next heartbeat.
    await b.waitFor((f) => f.type === 'sync.hint', 'a sync.hint after the failed forward', 10_000, hintsBefore);
    const caughtUp = await eventually(async () => {
      const ids = await syncAll(b, cursor);
      for (const id of whileStopped) expect(ids.has(id)).toBe(true);
      return ids;
    });
    expect(caughtUp.size).toBeGreaterThan(0);

    // 2. The peer is killed in the middle of a stream of messages.
    await eventually(async () => {
      const id = await send(`again-${sent.length}`);
      await b.waitForMessage((m) => m.msgId === id, 1000);
    });
    before = await scrape(c.httpUrl(0));
    let isStreaming = true;
    const streaming = (async () => {
      for (let i = 0; isStreaming; i++) {
        await send(`stream-${i}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await eventually(() => expect(b.messages().filter((m) => m.body.startsWith('stream-')).length).toBeGreaterThanOrEqual(5));
    first.proc.kill('SIGKILL');
    await exited(first.proc);
    await eventually(async () => expect(delta(before, await scrape(c.httpUrl(0)), 'simplechat_forwards_total', { result: 'failed' })).toBeGreaterThanOrEqual(1));
    isStreaming = false;
    await streaming;

    // 3. Restarted under the same id and address: bob comes back, catches up, and live delivery resumes over a new link.
    const second = await startPeerProcess('ws-peer', first.port);
    const b2 = await ProtocolSocket.open(`ws://127.0.0.1:${second.port}/ws`);
    open.push(b2);
    expect(await b2.register(await c.token(bob))).toMatchObject({ type: 'registered', instanceId: 'ws-peer' });
    await eventually(async () => {
      const ids = await syncAll(b2, cursor);
      expect(sent.filter((id) => !ids.has(id))).toEqual([]);
    });
    before = await scrape(c.httpUrl(0));
    await eventually(async () => {
      const id = await send(`restarted-${sent.length}`);
      await b2.waitForMessage((m) => m.msgId === id, 1000);
    });
    // (the ack reaches the sender just after the frame reached bob)
    await eventually(async () => expect(delta(before, await scrape(c.httpUrl(0)), 'simplechat_forwards_total', { result: 'ok' })).toBeGreaterThanOrEqual(1));
    expect(sample(await scrape(peerUrl), 'simplechat_peer_link_frames_received_total')).toBeGreaterThanOrEqual(1);
    second.proc.kill('SIGTERM');
    await exited(second.proc);
  });
});
