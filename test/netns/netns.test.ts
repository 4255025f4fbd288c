/**
 * Several hosts: the two SvWebsocket instances run as real processes in two
 * network namespaces of their own, each with a private address on a bridge
 * this test creates (10.200.X.0/29, X picked free at run time):
 *
 *   root namespace: bridge 10.200.X.1  SvDiscover, SvPersist (in-process),
 *                                      TCP forwards to the machine's Redis and
 *                                      RabbitMQ (they listen on 127.0.0.1 only)
 *   namespace A:    10.200.X.2:3002    SvWebsocket ws-a  PUBLIC_URL=http://10.200.X.2:3002
 *   namespace B:    10.200.X.3:3002    SvWebsocket ws-b  PUBLIC_URL=http://10.200.X.3:3002
 *
 * Inside a namespace 127.0.0.1 is that namespace's own loopback: an instance
 * that assumed localhost anywhere could not reach its peer or its services.
 * Everything the test creates is removed afterwards, whatever happened.
 * Skipped, with the reason, where the machine does not allow namespaces.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { ProtocolSocket } from '@simplechat/shared';
import { startCluster, uid, type TestCluster } from '../cluster';
import { services } from '../services';
import { eventually, INTERNAL_TOKEN, JWT_SECRET } from '../helpers';
import { scrape, sample } from '../metrics';

const ROOT = resolve(__dirname, '..', '..');
const WS_PORT = 3002;
const tag = `sc${process.pid % 100000}`;
const NS = { a: `${tag}-a`, b: `${tag}-b` };
const BRIDGE = `${tag}br`;
const VETH = { a: `${tag}a0`, b: `${tag}b0` };

function ip(...args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}`.trim() };
}
function mustIp(...args: string[]): void {
  const r = ip(...args);
  if (!r.ok) throw new Error(`ip ${args.join(' ')}: ${r.out}`);
}

/** Whether this machine lets us make namespaces; the reason when not. */
function probeNetns(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  const probe = `${tag}-probe`;
  ip('netns', 'del', probe); // a leftover of a crashed run with the same pid
  const add = ip('netns', 'add', probe);
  if (!add.ok) return `\`ip netns add\` is not permitted here (${add.out || 'ip missing'}); run as root with iproute2 installed`;
  ip('netns', 'del', probe);
  return undefined;
}
const whyNot = probeNetns();
if (whyNot) console.warn(`[netns] skipping the several-hosts test: ${whyNot}`);

/** A free 10.200.X.0/29: no address of this machine in 10.200.X.0/24 yet. */
function pickSubnet(): number {
  const used = ip('-o', '-4', 'addr', 'show').out;
  for (let tries = 0; tries < 50; tries++) {
    const x = Math.floor(Math.random() * 256);
    if (!used.includes(`10.200.${x}.`)) return x;
  }
  throw new Error('no free 10.200.X.0/24 found');
}

function forward(host: string, target: { host: string; port: number }, sockets: Set<Socket>): Promise<Server> {
  const server = createServer((inbound) => {
    const outbound = tcpConnect(target.port, target.host);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  return new Promise((r, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => r(server));
  });
}

let x = 0;
const addr = { bridge: '', a: '', b: '' };
let c: TestCluster | undefined;
const procs: ChildProcess[] = [];
const forwards: Server[] = [];
const forwardSockets = new Set<Socket>();
const sockets: ProtocolSocket[] = [];
const logs: string[] = [];

function startWs(name: 'a' | 'b', redisUrl: string, amqpUrl: string): Promise<void> {
  const cluster = c as TestCluster;
  const me = addr[name];
  const child = spawn('ip', ['netns', 'exec', NS[name], process.execPath, resolve(ROOT, 'SvWebsocket/dist/main.js')], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      ENV_FILE: '/nonexistent',
      ENVIRONMENT: 'test',
      LOG_LEVEL: 'info',
      WS_HOST: me,
      WS_PORT: String(WS_PORT),
      PUBLIC_URL: `http://${me}:${WS_PORT}`,
      INSTANCE_ID: `ws-${name}`,
      INTERNAL_TOKEN,
      JWT_SECRET,
      DISCOVER_URL: cluster.discoverUrl,
      PERSIST_URL: cluster.persistUrl,
      REDIS_URL: redisUrl,
      AMQP_URL: amqpUrl,
      KEY_PREFIX: cluster.keyPrefix,
      QUEUE_PREFIX: cluster.queuePrefix,
      HEARTBEAT_MS: '500',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  procs.push(child);
  return new Promise((ready, reject) => {
    child.once('exit', (code) => reject(new Error(`ws-${name} exited (${code}) before listening:\n${logs.join('\n')}`)));
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream as NodeJS.ReadableStream }).on('line', (line) => {
        logs.push(`[ws-${name}] ${line}`);
        if (line.includes('"msg":"SvWebsocket listening"')) ready();
      });
    }
  });
}

async function cleanup(): Promise<void> {
  for (const s of sockets) s.close();
  await Promise.all(
    procs.map(
      (p) =>
        new Promise<void>((r) => {
          if (p.exitCode !== null || p.signalCode !== null) return r();
          const kill = setTimeout(() => p.kill('SIGKILL'), 5000);
          p.once('exit', () => {
            clearTimeout(kill);
            r();
          });
          p.kill('SIGTERM');
        }),
    ),
  );
  await c?.close().catch(() => undefined);
  for (const s of forwardSockets) s.destroy();
  await Promise.all(forwards.map((f) => new Promise<void>((r) => f.close(() => r()))));
  removeNetwork();
}

/** Deleting a veth end removes its peer; then the namespaces and the bridge. Missing pieces are fine. */
function removeNetwork(): void {
  ip('link', 'del', VETH.a);
  ip('link', 'del', VETH.b);
  ip('netns', 'del', NS.a);
  ip('netns', 'del', NS.b);
  ip('link', 'del', BRIDGE);
}

describe('several hosts (network namespaces)', () => {
  beforeAll(async () => {
    if (whyNot) return;
    x = pickSubnet();
    addr.bridge = `10.200.${x}.1`;
    addr.a = `10.200.${x}.2`;
    addr.b = `10.200.${x}.3`;
    removeNetwork(); // leftovers of a crashed run with the same pid
    try {
      mustIp('link', 'add', BRIDGE, 'type', 'bridge');
      mustIp('addr', 'add', `${addr.bridge}/29`, 'dev', BRIDGE);
      mustIp('link', 'set', BRIDGE, 'up');
      for (const name of ['a', 'b'] as const) {
        const inner = `${tag}${name}1`;
        mustIp('netns', 'add', NS[name]);
        mustIp('link', 'add', VETH[name], 'type', 'veth', 'peer', 'name', inner);
        mustIp('link', 'set', inner, 'netns', NS[name]);
        mustIp('link', 'set', VETH[name], 'master', BRIDGE, 'up');
        mustIp('-n', NS[name], 'addr', 'add', `${addr[name]}/29`, 'dev', inner);
        mustIp('-n', NS[name], 'link', 'set', inner, 'up');
        mustIp('-n', NS[name], 'link', 'set', 'lo', 'up');
      }
      c = await startCluster({ wsCount: 0, host: addr.bridge, leaseMs: 5000 });
      const real = services();
      const redis = new URL(real.redisUrl);
      const amqp = new URL(real.amqpUrl);
      const redisFwd = await forward(addr.bridge, { host: redis.hostname, port: Number(redis.port || 6379) }, forwardSockets);
      const amqpFwd = await forward(addr.bridge, { host: amqp.hostname, port: Number(amqp.port || 5672) }, forwardSockets);
      forwards.push(redisFwd, amqpFwd);
      const viaBridge = (u: URL, server: Server) => {
        const v = new URL(u.toString());
        v.hostname = addr.bridge;
        v.port = String((server.address() as { port: number }).port);
        return v.toString().replace(/\/$/, '');
      };
      await Promise.all([startWs('a', viaBridge(redis, redisFwd), viaBridge(amqp, amqpFwd)), startWs('b', viaBridge(redis, redisFwd), viaBridge(amqp, amqpFwd))]);
    } catch (err) {
      await cleanup();
      throw err;
    }
  });
  afterAll(async () => {
    if (!whyNot) await cleanup();
  });

  it.skipIf(!!whyNot)('a message crosses between two instances on two distinct addresses, each advertising its PUBLIC_URL', async () => {
    const cluster = c as TestCluster;
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await ProtocolSocket.open(`ws://${addr.a}:${WS_PORT}/ws`);
    const b = await ProtocolSocket.open(`ws://${addr.b}:${WS_PORT}/ws`);
    sockets.push(a, b);
    expect(await a.register(await cluster.token(alice))).toMatchObject({ type: 'registered', instanceId: 'ws-a' });
    expect(await b.register(await cluster.token(bob))).toMatchObject({ type: 'registered', instanceId: 'ws-b' });

    // SvDiscover holds each instance's own address, never a loopback one.
    const where = async (user: string) => {
      const res = await fetch(`${cluster.discoverUrl}/internal/users/${user}`, { headers: { authorization: `Bearer ${INTERNAL_TOKEN}` } });
      return ((await res.json()) as { instances: { instanceId: string; url: string }[] }).instances;
    };
    await eventually(async () => expect(await where(bob)).toEqual([{ instanceId: 'ws-b', url: `http://${addr.b}:${WS_PORT}` }]));
    expect(await where(alice)).toEqual([{ instanceId: 'ws-a', url: `http://${addr.a}:${WS_PORT}` }]);

    const ack = await a.request({ type: 'send', id: 'x-1', to: bob, body: `from ${addr.a} to ${addr.b}` });
    expect(ack).toMatchObject({ type: 'ack', id: 'x-1' });
    expect(await b.waitForMessage((m) => m.msgId === ack.msgId)).toMatchObject({ from: alice, to: bob, body: `from ${addr.a} to ${addr.b}` });
    const back = await b.request({ type: 'send', id: 'y-1', to: alice, body: 'and back' });
    expect(await a.waitForMessage((m) => m.msgId === back.msgId)).toMatchObject({ from: bob, body: 'and back' });

    // It went over the peer link between the two addresses: ws-a forwarded batches that were acked, ws-b took them in.
    const fromA = await scrape(`http://${addr.a}:${WS_PORT}`);
    const atB = await scrape(`http://${addr.b}:${WS_PORT}`);
    expect(sample(fromA, 'simplechat_forwards_total', { result: 'ok' })).toBeGreaterThanOrEqual(1);
    expect(sample(atB, 'simplechat_peer_link_frames_received_total')).toBeGreaterThanOrEqual(1);
    console.log(`[netns] ws-a ${addr.a} (netns ${NS.a}) -> ws-b ${addr.b} (netns ${NS.b}): message ${String(ack.msgId)} delivered across; SvDiscover/SvPersist on ${addr.bridge}`);
  });
});
