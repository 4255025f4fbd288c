/**
 * The discovery lookup cache kept correct by SvDiscover's change
 * notifications: long-lived while they arrive, short-lived (DISCOVERY_CACHE_MS)
 * while they do not, and never caching an answer a notification overtook.
 * Everything runs against the real Redis and a real SvDiscover; the Redis
 * link of the subscriber goes through a TCP proxy the test can cut or stall,
 * and SvDiscover's answers through an HTTP gate that can hold them.
 */
import { createServer as createTcpServer, connect as tcpConnect, type Server as TcpServer, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from 'redis';
import { createJsonClient, createLogger, lookupResponse, type JsonClient, type ProtocolSocket } from '@simplechat/shared';
import { createDiscovery, type Discovery } from '../src/discovery';
import type { DiscoveryMetrics, InvalidationScope } from '../src/metrics';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { eventually, INTERNAL_TOKEN } from '../../test/helpers';
import { scrape, sample } from '../../test/metrics';
import { services } from '../../test/services';
import { startHttpGate } from '../../test/http-gate';

let c: TestCluster;
const open: ProtocolSocket[] = [];
const cleanups: (() => Promise<unknown> | unknown)[] = [];

beforeAll(async () => {
  c = await startCluster({ wsCount: 2, wsEnv: { DISCOVERY_CACHE_MS: '1000', DISCOVERY_CACHE_SUBSCRIBED_MS: '60000' } });
});
afterAll(async () => {
  for (const s of open) s.close();
  for (const clean of cleanups.reverse()) await clean();
  await c?.close();
});

async function connect(user: string, i: number): Promise<ProtocolSocket> {
  const s = await c.connect(user, i);
  open.push(s);
  return s;
}

describe('gateways with SvDiscover change notifications', () => {
  beforeAll(async () => {
    for (const i of [0, 1]) await eventually(async () => expect(sample(await scrape(c.httpUrl(i)), 'simplechat_discovery_changes_subscribed')).toBe(1));
  });

  it('a user who moves to another instance gets a message from the instance it left live, within seconds (the notification dropped the cached lookup, which would otherwise live 60 s)', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await connect(alice, 0);
    const b1 = await connect(bob, 0);
    const first = await a.request({ type: 'send', to: bob, body: 'here' });
    await b1.waitForMessage((m) => m.msgId === first.msgId);
    // ws-1 now serves bob from its cache: bob -> [ws-1], which would route nothing to ws-2
    const hitsBefore = sample(await scrape(c.httpUrl(0)), 'simplechat_discovery_cache_hits_total') ?? 0;
    const second = await a.request({ type: 'send', to: bob, body: 'still here' });
    await b1.waitForMessage((m) => m.msgId === second.msgId);
    expect(sample(await scrape(c.httpUrl(0)), 'simplechat_discovery_cache_hits_total')).toBeGreaterThan(hitsBefore);

    b1.close();
    const b2 = await connect(bob, 1);
    const moved = await a.request({ type: 'send', to: bob, body: 'moved' });
    const m = await b2.waitForMessage((m) => m.msgId === moved.msgId, 5000);
    expect(m).toMatchObject({ from: alice, to: bob, body: 'moved' });
  });

  it('at steady state lookups are answered from the cache, past DISCOVERY_CACHE_MS, and SvDiscover is not asked', async () => {
    const senders = Array.from({ length: 5 }, () => uid('s'));
    const recipients = Array.from({ length: 5 }, () => uid('r'));
    // A sending instance without the short cache (DISCOVERY_CACHE_MS=0): every answer it reuses
    // is reused past DISCOVERY_CACHE_MS, only because the notifications keep it current.
    await c.addWs({ INSTANCE_ID: 'ws-no-short-cache', DISCOVERY_CACHE_MS: '0' });
    const from = c.ws.length - 1;
    await eventually(async () => expect(sample(await scrape(c.httpUrl(from)), 'simplechat_discovery_changes_subscribed')).toBe(1));
    const out = await Promise.all(senders.map((u) => connect(u, from)));
    const inbox = await Promise.all(recipients.map((u) => connect(u, 1)));
    const round = async (tag: string) => {
      const acks = await Promise.all(out.flatMap((s, i) => recipients.map((to) => s.request({ type: 'send', to, body: `${tag}-${i}` }))));
      await Promise.all(acks.map((ack) => inbox[recipients.indexOf(ack.to as string)]?.waitForMessage((m) => m.msgId === ack.msgId)));
      return acks.length;
    };
    await round('warm');
    const askedBefore = sample(await scrape(c.discoverUrl), 'simplechat_discover_lookup_users_total');
    const hitsBefore = sample(await scrape(c.httpUrl(from)), 'simplechat_discovery_cache_hits_total') ?? 0;
    let sent = 0;
    for (let i = 0; i < 4; i++) sent += await round(`steady${i}`);
    expect(sample(await scrape(c.discoverUrl), 'simplechat_discover_lookup_users_total')).toBe(askedBefore);
    // each message looks up its recipient and the sender's other devices
    expect((sample(await scrape(c.httpUrl(from)), 'simplechat_discovery_cache_hits_total') ?? 0) - hitsBefore).toBe(2 * sent);
  });
});

// ---- createDiscovery on its own, with a breakable Redis link and a gated SvDiscover ----

/** A TCP proxy to the test Redis that can refuse and drop connections (cut) or stop moving bytes (stall). */
async function startRedisProxy(): Promise<{ url: string; cut(): void; stall(): void; restore(): void; close(): Promise<void> }> {
  const target = new URL(services().redisUrl);
  const pairs = new Set<[Socket, Socket]>();
  let isCut = false;
  let isStalled = false;
  const server: TcpServer = createTcpServer((downstream) => {
    if (isCut) {
      downstream.destroy();
      return;
    }
    const upstream = tcpConnect(Number(target.port || 6379), target.hostname);
    const pair: [Socket, Socket] = [downstream, upstream];
    pairs.add(pair);
    downstream.pipe(upstream);
    upstream.pipe(downstream);
    if (isStalled) for (const s of pair) s.pause();
    const end = () => {
      pairs.delete(pair);
      downstream.destroy();
      upstream.destroy();
    };
    for (const s of pair) s.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `redis://127.0.0.1:${port}`,
    cut() {
      isCut = true;
      for (const [d, u] of pairs) d.destroy(), u.destroy();
    },
    // bytes stay in the kernel's buffers: the sockets look fine, nothing arrives
    stall() {
      isStalled = true;
      for (const pair of pairs) for (const s of pair) s.pause();
    },
    restore() {
      isCut = false;
      isStalled = false;
      for (const pair of pairs) for (const s of pair) s.resume();
    },
    close: () => {
      for (const [d, u] of pairs) d.destroy(), u.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A pass-through to SvDiscover that can hold lookup answers until released. */
const startGate = (targetUrl: string) => startHttpGate(targetUrl, { at: 'answer', holds: (_method, path) => path === '/internal/lookup' });

interface Observed {
  discovery: Discovery;
  counts: { lookups: number; hits: number; renewed: number; invalidated: Record<InvalidationScope, number>; subscribed: boolean | undefined };
  logs: { level: string; msg: string }[];
  /** looks the user up and says whether the answer came from the cache */
  isCached(user: string): Promise<boolean>;
  /** moves the clock the cache expires by */
  advance(ms: number): void;
}

let seq = 0;
async function observe(options: { client: JsonClient; redisUrl: string; cacheMs: number; keyPrefix?: string }): Promise<Observed> {
  const counts: Observed['counts'] = { lookups: 0, hits: 0, renewed: 0, invalidated: { user: 0, instance: 0, all: 0 }, subscribed: undefined };
  const metrics: DiscoveryMetrics = {
    lookups: (n) => void (counts.lookups += n),
    cacheHits: (n) => void (counts.hits += n),
    renewed: (n) => void (counts.renewed += n),
    asked: () => undefined,
    invalidated: (scope, n) => void (counts.invalidated[scope] += n),
    changesSubscribed: (is) => void (counts.subscribed = is),
  };
  const logs: Observed['logs'] = [];
  const sink = new Writable({
    write(line: Buffer, _enc, done) {
      const { level, msg } = JSON.parse(line.toString()) as { level: string; msg: string };
      logs.push({ level, msg });
      done();
    },
  });
  // the subscriber's connections are copies of this client: its reconnect strategy is theirs
  const template = createClient({ url: options.redisUrl, disableOfflineQueue: true, socket: { connectTimeout: 500, reconnectStrategy: () => 50 } });
  const redis = { subscriber: () => template.duplicate() };
  const instanceId = `observer-${++seq}`;
  let offsetMs = 0;
  const discovery = createDiscovery({
    client: options.client,
    instanceId,
    url: `http://127.0.0.1:9/${instanceId}`,
    heartbeatMs: 100,
    localUsers: () => [],
    hasLocal: () => false,
    log: createLogger('test', 'info', sink),
    metrics,
    cacheMs: options.cacheMs,
    subscribedCacheMs: 60_000,
    changes: { redis, keyPrefix: options.keyPrefix ?? c.keyPrefix },
    now: () => Date.now() + offsetMs,
  });
  await discovery.start();
  cleanups.push(() => discovery.close());
  return {
    discovery,
    counts,
    logs,
    async isCached(user) {
      const hits = counts.hits;
      await discovery.lookup([user]);
      return counts.hits > hits;
    },
    advance(ms) {
      offsetMs += ms;
    },
  };
}

describe('createDiscovery with change notifications', () => {
  let api: JsonClient;
  beforeAll(() => {
    api = createJsonClient({ baseUrl: c.discoverUrl, token: INTERNAL_TOKEN, timeoutMs: 2000, name: 'SvDiscover' });
    cleanups.push(() => api.close());
  });
  /** another instance (with a live lease) claims the user, as a gateway does on register */
  async function claimElsewhere(user: string): Promise<string> {
    const id = `elsewhere-${++seq}`;
    const url = `http://127.0.0.1:9/${id}`;
    await api.request('PUT', `/internal/instances/${id}`, null, { url });
    await api.request('POST', '/internal/claims', null, { instanceId: id, url, add: [user] });
    return id;
  }

  /** an observer whose lookups pass a gate that can hold SvDiscover's answers */
  async function gated() {
    const gate = await startGate(c.discoverUrl);
    const client = createJsonClient({ baseUrl: gate.url, token: INTERNAL_TOKEN, timeoutMs: 5000, name: 'SvDiscover' });
    cleanups.push(() => gate.close(), () => client.close());
    const o = await observe({ client, redisUrl: services().redisUrl, cacheMs: 300 });
    await eventually(() => expect(o.counts.subscribed).toBe(true));
    return { gate, o };
  }

  it('keeps answers past DISCOVERY_CACHE_MS only while subscribed; losing Redis falls back to it, and getting it back empties the cache', async () => {
    const proxy = await startRedisProxy();
    cleanups.push(() => proxy.close());
    const o = await observe({ client: api, redisUrl: proxy.url, cacheMs: 300 });
    const lost = () => o.logs.filter((l) => l.level === 'warn' && l.msg.startsWith('lost SvDiscover change notifications'));
    const back = () => o.logs.filter((l) => l.level === 'info' && /SvDiscover change notifications/.test(l.msg));
    await eventually(() => expect(o.counts.subscribed).toBe(true));
    expect(back()).toHaveLength(1);
    const u = uid('carl');

    expect(await o.isCached(u)).toBe(false);
    expect(await o.isCached(u)).toBe(true);
    o.advance(600); // twice cacheMs
    expect(await o.isCached(u)).toBe(true);

    // a change to the user drops it at once
    const before = o.counts.invalidated.user;
    const where = await claimElsewhere(u);
    await eventually(() => expect(o.counts.invalidated.user).toBeGreaterThan(before));
    expect((await o.discovery.lookup([u])).get(u)?.map((r) => r.instanceId)).toEqual([where]);

    // Redis connection lost (and refused while reconnecting): cacheMs applies
    proxy.cut();
    await eventually(() => expect(o.counts.subscribed).toBe(false));
    expect(await o.isCached(u)).toBe(false);
    expect(await o.isCached(u)).toBe(true);
    o.advance(600); // twice cacheMs
    expect(await o.isCached(u)).toBe(false);
    expect(lost()).toHaveLength(1); // one warning for the outage, not one per reconnection attempt

    // back: the cache starts empty, then answers live long again
    const allBefore = o.counts.invalidated.all;
    proxy.restore();
    await eventually(() => expect(o.counts.subscribed).toBe(true));
    expect(o.counts.invalidated.all).toBeGreaterThan(allBefore);
    expect(back()).toHaveLength(2);
    expect(await o.isCached(u)).toBe(false);
    o.advance(600); // twice cacheMs
    expect(await o.isCached(u)).toBe(true);
  });

  it('notices a Redis link that stalls without closing (heartbeats stop echoing) and falls back to DISCOVERY_CACHE_MS', async () => {
    const proxy = await startRedisProxy();
    cleanups.push(() => proxy.close());
    const o = await observe({ client: api, redisUrl: proxy.url, cacheMs: 300 });
    await eventually(() => expect(o.counts.subscribed).toBe(true));
    const u = uid('dora');
    expect(await o.isCached(u)).toBe(false);

    proxy.stall();
    await eventually(() => expect(o.counts.subscribed).toBe(false));
    expect(await o.isCached(u)).toBe(false);
    expect(await o.isCached(u)).toBe(true);
    o.advance(600); // twice cacheMs
    expect(await o.isCached(u)).toBe(false);

    proxy.restore();
    await eventually(() => expect(o.counts.subscribed).toBe(true));
  });

  it('without notifications reaching it (another key prefix) it never counts as subscribed, says so once, and keeps DISCOVERY_CACHE_MS', async () => {
    const o = await observe({ client: api, redisUrl: services().redisUrl, cacheMs: 300, keyPrefix: `${c.keyPrefix}other:` });
    const warned = () => o.logs.filter((l) => l.level === 'warn' && l.msg.startsWith('heartbeats are not echoed'));
    await eventually(() => expect(warned()).toHaveLength(1));
    expect(o.counts.subscribed).toBe(false);
    const u = uid('emil');
    expect(await o.isCached(u)).toBe(false);
    expect(await o.isCached(u)).toBe(true);
    o.advance(600); // twice cacheMs
    expect(await o.isCached(u)).toBe(false);
    expect(warned()).toHaveLength(1);
  });

  it('a lookup in flight when a notification names its user answers with what it got but does not cache it', async () => {
    const { gate, o } = await gated();

    // control: an answer held back without any change meanwhile is cached
    const calm = uid('fred');
    gate.hold();
    const calmAnswer = o.discovery.lookup([calm]);
    await eventually(() => expect(gate.held()).toBe(1));
    gate.release();
    await calmAnswer;
    expect(await o.isCached(calm)).toBe(true);

    const u = uid('gina');
    gate.hold();
    const answer = o.discovery.lookup([u]);
    await eventually(() => expect(gate.held()).toBe(1));
    // SvDiscover answered "nowhere"; before that answer arrives, the user registers elsewhere
    const before = o.counts.invalidated.user;
    const where = await claimElsewhere(u);
    await eventually(() => expect(o.counts.invalidated.user).toBeGreaterThan(before));
    gate.release();
    expect((await answer).get(u)).toEqual([]);
    // not cached: the next lookup asks again and finds the user
    expect(await o.isCached(u)).toBe(false);
    expect((await o.discovery.lookup([u])).get(u)?.map((r) => r.instanceId)).toEqual([where]);
  });

  // Lookups in use stay cached, and a user is asked about once at a time.
  it('an answer used near the end of its time in the cache is renewed in the background: no send waits for it to lapse', async () => {
    const { gate, o } = await gated();
    const u = uid('hal');
    expect(await o.isCached(u)).toBe(false);
    expect(gate.matched()).toBe(1);
    // early in its 60 s: used as it is, nothing asked
    o.advance(30_000);
    expect(await o.isCached(u)).toBe(true);
    expect(gate.matched()).toBe(1);
    // in its last sixth: still answered from the cache at once, and asked again once in the background
    gate.hold();
    o.advance(25_000);
    expect(await o.isCached(u)).toBe(true);
    expect(await o.isCached(u)).toBe(true);
    await eventually(() => expect(gate.held()).toBe(1));
    expect(gate.matched()).toBe(2);
    gate.release();
    await eventually(() => expect(o.counts.renewed).toBe(1));
    // past the first answer's 60 s, the renewed one is in use
    o.advance(10_000);
    expect(await o.isCached(u)).toBe(true);
    expect(gate.matched()).toBe(2);
  });

  it('an answer not used near its end lapses (only answers in use are renewed)', async () => {
    const { gate, o } = await gated();
    const u = uid('ida');
    expect(await o.isCached(u)).toBe(false);
    o.advance(61_000);
    expect(await o.isCached(u)).toBe(false);
    expect(gate.matched()).toBe(2);
  });

  it('lookups of a user whose answer is on its way wait for it instead of asking again', async () => {
    const { gate, o } = await gated();
    const u = uid('jan');
    const v = uid('kim');
    gate.hold();
    const first = o.discovery.lookup([u]);
    await eventually(() => expect(gate.held()).toBe(1));
    // later ticks: u is on its way, v is new
    const second = o.discovery.lookup([u]);
    await new Promise((r) => setImmediate(r)); // the tick a call for the second lookup would leave in
    const third = o.discovery.lookup([u, v]);
    await eventually(() => expect(gate.held()).toBe(2));
    gate.release();
    const answers = await Promise.all([first, second, third]);
    for (const a of answers) expect(a.get(u)).toEqual([]);
    expect(answers[2]?.get(v)).toEqual([]);
    expect(gate.matched()).toBe(2); // one call for u, one for v
  });

  it('a lookup made after a notification named its user does not wait for an answer asked before it: it asks again', async () => {
    const { gate, o } = await gated();
    const u = uid('lea');
    gate.hold();
    const before = o.discovery.lookup([u]);
    await eventually(() => expect(gate.held()).toBe(1));
    const invalidated = o.counts.invalidated.user;
    const where = await claimElsewhere(u);
    await eventually(() => expect(o.counts.invalidated.user).toBeGreaterThan(invalidated));
    const after = o.discovery.lookup([u]);
    await eventually(() => expect(gate.held()).toBe(2));
    gate.release();
    expect((await before).get(u)).toEqual([]);
    expect((await after).get(u)?.map((r) => r.instanceId)).toEqual([where]);
  });
});

/** An instance's discovery without a lookup cache, heartbeating once a minute, `local` its users. */
function uncachedDiscovery(client: JsonClient, instanceId: string, local: ReadonlySet<string>): Discovery {
  const discovery = createDiscovery({
    client,
    instanceId,
    url: `http://127.0.0.1:9/${instanceId}`,
    heartbeatMs: 60_000,
    localUsers: () => [...local],
    hasLocal: (u) => local.has(u),
    log: createLogger('test', 'silent'),
    cacheMs: 0,
    subscribedCacheMs: 0,
  });
  cleanups.push(() => discovery.close());
  return discovery;
}

describe('the heartbeat', () => {
  it('a gateway started before SvDiscover reaches it within seconds once it answers, though HEARTBEAT_MS is a minute', async () => {
    // Where the gateway looks for SvDiscover: connections are dropped until it "starts", then
    // passed through to the real one.
    const target = new URL(c.discoverUrl);
    let isListening = false;
    const door: TcpServer = createTcpServer((downstream) => {
      if (!isListening) return downstream.destroy();
      const upstream = tcpConnect(Number(target.port), target.hostname);
      downstream.pipe(upstream).pipe(downstream);
      upstream.on('error', () => downstream.destroy());
      downstream.on('error', () => upstream.destroy());
    });
    await new Promise<void>((resolve) => door.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => door.close(resolve)));
    const client = createJsonClient({ baseUrl: `http://127.0.0.1:${(door.address() as { port: number }).port}`, token: INTERNAL_TOKEN, timeoutMs: 2000, name: 'SvDiscover' });
    cleanups.push(() => client.close());
    const discovery = uncachedDiscovery(client, `early-${++seq}`, new Set());
    await discovery.start();
    expect(discovery.isUp()).toBe(false);
    isListening = true;
    await eventually(() => expect(discovery.isUp()).toBe(true), { timeoutMs: 5_000 });
  });
});

describe('claims', () => {
  it('a user who registers while the claims are being re-asserted stays claimed (claim calls go out one at a time, in order)', async () => {
    const api = createJsonClient({ baseUrl: c.discoverUrl, token: INTERNAL_TOKEN, timeoutMs: 2000, name: 'SvDiscover' });
    cleanups.push(() => api.close());
    // The re-assertion (PUT .../claims) is held before it reaches SvDiscover, as on a slow
    // connection: anything sent meanwhile on another connection would get there first.
    const sent: string[] = [];
    let releaseReassert: (() => void) | undefined;
    let onReassertHeld: () => void = () => undefined;
    const reassertHeld = new Promise<void>((resolve) => (onReassertHeld = resolve));
    const client: JsonClient = {
      baseUrl: api.baseUrl,
      async request(method, path, schema, body) {
        sent.push(`${method} ${path}`);
        if (method === 'PUT' && path.endsWith('/claims') && !releaseReassert) {
          await new Promise<void>((release) => {
            releaseReassert = release;
            onReassertHeld();
          });
        }
        return api.request(method, path, schema, body);
      },
      close: async () => undefined,
    };
    const instanceId = `claims-${++seq}`;
    const ann = uid('ann');
    const ben = uid('ben');
    const local = new Set([ann]);
    const discovery = uncachedDiscovery(client, instanceId, local);
    // A new instance: its first heartbeat finds no lease and re-asserts the users local now (ann).
    const started = discovery.start();
    await reassertHeld;
    // ben registers while that re-assertion is on its way
    local.add(ben);
    const claimed = discovery.claimChanged(ben);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(sent).not.toContain('POST /internal/claims'); // ben's claim waits its turn
    releaseReassert?.();
    await started;
    expect(await claimed).toBe(true);
    const where = await api.request('POST', '/internal/lookup', lookupResponse, { users: [ann, ben] });
    expect(where.users[ann]?.map((r) => r.instanceId)).toEqual([instanceId]);
    expect(where.users[ben]?.map((r) => r.instanceId)).toEqual([instanceId]);
  });
});
