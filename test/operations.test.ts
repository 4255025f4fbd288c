/**
 * What an operator relies on: /metrics behind the internal token on every
 * service, the series moving under traffic, liveness apart from readiness, and
 * readiness turning 503 while an instance drains.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { AddressInfo } from 'node:net';
import { ProtocolSocket } from '@simplechat/shared';
import { startCluster, uid, type TestCluster } from './cluster';
import { eventually, INTERNAL_TOKEN } from './helpers';
import { scrape, sample } from './metrics';

let c: TestCluster;
const open: ProtocolSocket[] = [];
async function connect(user: string, i = 0): Promise<ProtocolSocket> {
  const s = await c.connect(user, i);
  open.push(s);
  return s;
}
const services = () => [
  { name: 'SvWebsocket', url: c.httpUrl(0) },
  { name: 'SvDiscover', url: c.discoverUrl },
  { name: 'SvPersist', url: c.persistUrl },
];
const delta = (before: string, after: string, name: string, labels?: Record<string, string>) => (sample(after, name, labels) ?? 0) - (sample(before, name, labels) ?? 0);

beforeAll(async () => {
  c = await startCluster({ wsCount: 2 });
});
afterAll(async () => {
  for (const s of open) s.close();
  await c?.close();
});

describe('metrics endpoint', () => {
  it('every service serves Prometheus text on /metrics and /internal/metrics only with the internal token, whatever the case or a trailing slash', async () => {
    for (const svc of services()) {
      for (const path of ['/metrics', '/metrics/', '/METRICS', '/Internal/metrics', '/internal/metrics']) {
        const res = await fetch(`${svc.url}${path}`);
        expect(res.status, `${svc.name} ${path} without a token`).toBe(401);
        await res.body?.cancel();
        const wrong = await fetch(`${svc.url}${path}`, { headers: { authorization: 'Bearer not-the-token' } });
        expect(wrong.status, `${svc.name} ${path} with a wrong token`).toBe(401);
        await wrong.body?.cancel();
      }
      const res = await fetch(`${svc.url}/metrics`, { headers: { authorization: `Bearer ${INTERNAL_TOKEN}` } });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      const text = await res.text();
      expect(sample(text, 'simplechat_internal_auth_refused_total', { service: svc.name })).toBeGreaterThanOrEqual(10);
      expect(text).toMatch(/^# TYPE simplechat_http_requests_total counter$/m);
    }
  });

  it('an internal route cannot be reached without the token by changing its case', async () => {
    const bob = uid('bob');
    const b = await connect(bob, 1);
    const frame = JSON.stringify({ type: 'message', msgId: 'forged', from: 'mallory', to: bob, body: 'forged', ts: Date.now() });
    for (const path of ['/INTERNAL/deliver', '/Internal/Deliver/', '/internal/deliver']) {
      const res = await fetch(`${c.httpUrl(1)}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ users: [bob], frame }] }) });
      expect(res.status, path).toBe(401);
      await res.body?.cancel();
    }
    await b.request({ type: 'sync', after: '0', limit: 1 });
    expect(b.frames.filter((f) => f.type === 'message')).toEqual([]);
  });

  it('under traffic the series move: frames, acks and their latency, forwards, lookups, confirms, stored batches', async () => {
    const N = 200;
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const before = await Promise.all([scrape(c.httpUrl(0)), scrape(c.httpUrl(1)), scrape(c.discoverUrl), scrape(c.persistUrl)]);
    const acks = await Promise.all(Array.from({ length: N }, (_, i) => a.request({ type: 'send', id: `m${i}`, to: bob, body: `load ${i}` })));
    expect(acks.every((f) => f.type === 'ack')).toBe(true);
    await eventually(() => expect(b.messages().length).toBe(N));
    // ws-1 counts a forward when ws-2's ack comes back, just after the frames reached bob
    await eventually(async () => expect(delta(before[0] as string, await scrape(c.httpUrl(0)), 'simplechat_forward_frames_total')).toBe(N));

    const [ws1, ws2, discover] = await Promise.all([scrape(c.httpUrl(0)), scrape(c.httpUrl(1)), scrape(c.discoverUrl)]);
    expect(delta(before[0] as string, ws1, 'simplechat_frames_in_total', { type: 'send' })).toBe(N);
    expect(delta(before[0] as string, ws1, 'simplechat_acks_total')).toBe(N);
    expect(delta(before[0] as string, ws1, 'simplechat_ack_latency_seconds_count')).toBe(N);
    expect(delta(before[0] as string, ws1, 'simplechat_frames_out_total', { type: 'ack' })).toBe(N);
    expect(delta(before[0] as string, ws1, 'simplechat_published_messages_total')).toBe(N);
    expect(delta(before[0] as string, ws1, 'simplechat_publish_confirms_total')).toBeGreaterThan(0);
    expect(delta(before[0] as string, ws1, 'simplechat_publish_confirm_latency_seconds_count')).toBeGreaterThan(0);
    expect(delta(before[0] as string, ws1, 'simplechat_forward_frames_total')).toBe(N);
    expect(delta(before[0] as string, ws1, 'simplechat_forwards_total', { result: 'ok' })).toBeGreaterThan(0);
    expect(delta(before[0] as string, ws1, 'simplechat_forwards_total', { result: 'failed' })).toBe(0);
    expect(delta(before[0] as string, ws1, 'simplechat_forward_batch_frames_sum')).toBe(N);
    expect(delta(before[0] as string, ws1, 'simplechat_discovery_lookups_total')).toBe(2 * N);
    expect(sample(ws1, 'simplechat_discovery_cache_hits_total')).toBeDefined();
    expect(sample(ws1, 'simplechat_connections_open', { instance_id: 'ws-1' })).toBeGreaterThanOrEqual(1);
    expect(sample(ws1, 'simplechat_dependency_up', { dependency: 'rabbitmq' })).toBe(1);
    expect(sample(ws1, 'simplechat_dependency_up', { dependency: 'redis' })).toBe(1);
    expect(sample(ws1, 'simplechat_dependency_up', { dependency: 'discover' })).toBe(1);
    expect(delta(before[1] as string, ws2, 'simplechat_frames_out_total', { type: 'message' })).toBe(N);
    // Cross-instance delivery went over the peer link: every frame ws-1 forwarded arrived there, in as many batches as ws-1 sent.
    expect(delta(before[1] as string, ws2, 'simplechat_peer_link_frames_received_total')).toBe(N);
    expect(delta(before[1] as string, ws2, 'simplechat_peer_link_batches_received_total')).toBe(delta(before[0] as string, ws1, 'simplechat_forwards_total', { result: 'ok' }));
    expect(delta(before[2] as string, discover, 'simplechat_http_requests_total', { route: '/internal/lookup', status: '200' })).toBeGreaterThan(0);
    expect(delta(before[2] as string, discover, 'simplechat_discover_lookup_users_total')).toBeGreaterThanOrEqual(2);
    expect(delta(before[2] as string, discover, 'simplechat_discover_lookup_found_total')).toBeGreaterThanOrEqual(2);
    expect(sample(discover, 'simplechat_dependency_up', { dependency: 'redis' })).toBe(1);

    const persist = await eventually(async () => {
      const text = await scrape(c.persistUrl);
      expect(delta(before[3] as string, text, 'simplechat_stored_messages_total')).toBeGreaterThanOrEqual(N);
      // from a broker query with its own deadline: absent from a scrape where it did not answer in time
      expect(sample(text, 'simplechat_queue_depth', { queue: 'messages' })).toBeGreaterThanOrEqual(0);
      expect(sample(text, 'simplechat_queue_depth', { queue: 'dead_letters' })).toBe(0);
      expect(sample(text, 'simplechat_consumer_lag_seconds')).toBeGreaterThanOrEqual(0);
      return text;
    });
    expect(delta(before[3] as string, persist, 'simplechat_insert_batch_messages_sum')).toBeGreaterThanOrEqual(N);
    expect(delta(before[3] as string, persist, 'simplechat_insert_latency_seconds_count')).toBeGreaterThan(0);
    expect(delta(before[3] as string, persist, 'simplechat_store_lag_seconds_count')).toBeGreaterThan(0);
    expect(sample(persist, 'simplechat_last_stored_message_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);
    expect(sample(persist, 'simplechat_dead_lettered_total')).toBe(0);
    expect(sample(persist, 'simplechat_dependency_up', { dependency: 'postgres' })).toBe(1);
    expect(sample(persist, 'simplechat_dependency_up', { dependency: 'rabbitmq' })).toBe(1);
  });

  it('counts rate-limited sends and refused connections by reason', async () => {
    const limited = await c.addWs({ RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '1', INSTANCE_ID: 'ws-limited' });
    const url = `http://127.0.0.1:${limited.port}`;
    const before = await scrape(url);
    const s = await ProtocolSocket.open(`ws://127.0.0.1:${limited.port}/ws`);
    open.push(s);
    await s.register(await c.token(uid('carol')));
    const answers = await Promise.all([1, 2, 3].map((i) => s.request({ type: 'send', id: `r${i}`, to: 'dave', body: 'fast' })));
    const rateLimited = answers.filter((f) => f.type === 'error' && f.code === 'rate_limited').length;
    expect(rateLimited).toBeGreaterThanOrEqual(1);

    await expect(ProtocolSocket.open(`ws://127.0.0.1:${limited.port}/elsewhere`)).rejects.toThrow(/404/);
    await expect(ProtocolSocket.open(`ws://127.0.0.1:${limited.port}/ws`, { headers: { origin: 'https://evil.example' } })).rejects.toThrow(/403/);
    const bad = await ProtocolSocket.open(`ws://127.0.0.1:${limited.port}/ws`);
    open.push(bad);
    await bad.register('not-a-jwt');
    await bad.waitForClose();

    const after = await scrape(url);
    expect(delta(before, after, 'simplechat_sends_rate_limited_total')).toBe(rateLimited);
    expect(delta(before, after, 'simplechat_errors_sent_total', { code: 'rate_limited' })).toBe(rateLimited);
    expect(delta(before, after, 'simplechat_connections_refused_total', { reason: 'not_found' })).toBe(1);
    expect(delta(before, after, 'simplechat_connections_refused_total', { reason: 'origin' })).toBe(1);
    expect(delta(before, after, 'simplechat_connections_refused_total', { reason: 'unauthorized' })).toBe(1);
    expect(delta(before, after, 'simplechat_server_closes_total', { code: '4401' })).toBe(1);
    expect(delta(before, after, 'simplechat_frames_in_total', { type: 'register' })).toBe(2);
  });
});

describe('documentation of the series', () => {
  it('docs/OPERATIONS.md documents every simplechat_* series, and the Grafana dashboard uses only series that exist', async () => {
    const texts = await Promise.all(services().map((svc) => scrape(svc.url)));
    const names = new Set(texts.flatMap((t) => [...t.matchAll(/^# TYPE (simplechat_\w+) /gm)].map((m) => m[1] as string)));
    expect(names.size).toBeGreaterThan(40);
    const ops = readFileSync(resolve(__dirname, '../docs/OPERATIONS.md'), 'utf8');
    expect([...names].filter((n) => !ops.includes(`\`${n}`))).toEqual([]);
    const dashboard = readFileSync(resolve(__dirname, '../docs/grafana-dashboard.json'), 'utf8');
    JSON.parse(dashboard);
    const used = new Set([...dashboard.matchAll(/simplechat_\w+/g)].map((m) => (m[0] as string).replace(/_(bucket|sum|count)$/, '')));
    expect(used.size).toBeGreaterThan(30);
    expect([...used].filter((n) => !names.has(n))).toEqual([]);
    // (a name ending in _ is a family, as in `simplechat_http_*`)
    const documented = new Set([...ops.matchAll(/`(simplechat_\w+)/g)].map((m) => m[1] as string).filter((n) => !n.endsWith('_')));
    expect([...documented].filter((n) => !names.has(n))).toEqual([]);
  });
});

describe('health endpoints', () => {
  it('every service answers /health/live and /health/ready with 200 and keeps /health as PROTOCOL.md says', async () => {
    for (const svc of services()) {
      const live = await fetch(`${svc.url}/health/live`);
      expect(live.status).toBe(200);
      expect(await live.json()).toMatchObject({ status: 'live', service: svc.name });
      const ready = await fetch(`${svc.url}/health/ready`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toMatchObject({ status: 'ready', service: svc.name });
      const health = await fetch(`${svc.url}/health`);
      expect(health.status).toBe(200);
      expect(await health.json()).toMatchObject({ service: svc.name, dependencies: expect.any(Object) });
    }
  });

  it('SvWebsocket without its broker is live but not ready', async () => {
    const ws = await c.addWs({ AMQP_URL: 'amqp://guest:guest@127.0.0.1:1', INSTANCE_ID: 'ws-nobroker' });
    const live = await fetch(`http://127.0.0.1:${ws.port}/health/live`);
    expect(live.status).toBe(200);
    await live.body?.cancel();
    const ready = await fetch(`http://127.0.0.1:${ws.port}/health/ready`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ status: 'not ready', reason: expect.stringMatching(/RabbitMQ/), checks: { rabbitmq: false } });
    expect(sample(await scrape(`http://127.0.0.1:${ws.port}`), 'simplechat_dependency_up', { dependency: 'rabbitmq' })).toBe(0);
    await ws.close();
  });

  it('while an instance drains, /health/ready answers 503, /health/live 200, new connections are refused, and in-flight work is answered before clients get 1001', async () => {
    // A stand-in for SvPersist's read API (an interface we own) that holds history requests until released.
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let heldRequests = 0;
    const fake: Server = createServer((req, res: ServerResponse) => {
      const reply = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      if (req.url?.startsWith('/internal/cursor')) return reply(200, { cursor: '0', newestTs: null });
      if (req.url?.startsWith('/internal/history')) {
        heldRequests++;
        return void released.then(() => reply(200, { messages: [], more: false }));
      }
      reply(404, { error: 'not here' });
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    try {
      const ws = await c.addWs({ PERSIST_URL: `http://127.0.0.1:${(fake.address() as AddressInfo).port}`, INSTANCE_ID: 'ws-drain' });
      const base = `http://127.0.0.1:${ws.port}`;
      const s = await ProtocolSocket.open(`ws://127.0.0.1:${ws.port}/ws`);
      open.push(s);
      await s.register(await c.token(uid('erin')));
      const history = s.request({ type: 'history', with: 'frank' });
      await eventually(() => expect(heldRequests).toBe(1));

      const closing = ws.close();
      const ready = await fetch(`${base}/health/ready`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({ status: 'not ready', reason: expect.stringMatching(/shutting down/), checks: { draining: true } });
      const live = await fetch(`${base}/health/live`);
      expect(live.status).toBe(200);
      await live.body?.cancel();
      await expect(ProtocolSocket.open(`ws://127.0.0.1:${ws.port}/ws`)).rejects.toThrow(/503/);
      const text = await scrape(base);
      expect(sample(text, 'simplechat_ready')).toBe(0);
      expect(sample(text, 'simplechat_connections_refused_total', { reason: 'draining' })).toBe(1);
      expect(s.closeCode).toBeUndefined();

      release();
      expect(await history).toMatchObject({ type: 'history', messages: [] });
      expect(await s.waitForClose()).toBe(1001);
      await closing;
    } finally {
      release();
      await new Promise<void>((r) => fake.close(() => r()));
    }
  });
});
