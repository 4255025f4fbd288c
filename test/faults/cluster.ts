/**
 * The SimpleChat cluster as real processes: SvDiscover, SvPersist and two
 * SvWebsocket instances, from the compiled dist/ (npm run test:faults builds
 * first), each on its own free loopback port, with this scenario's key
 * prefix, queue prefix and database. Each can be killed, stopped, resumed and
 * restarted on the same port.
 */
import { join, resolve } from 'node:path';
import { readFileSync } from 'node:fs';
import { SignJWT } from 'jose';
import { Client } from 'pg';
import { request } from 'undici';
import WebSocket from 'ws';
import { ProtocolSocket } from '@simplechat/shared';
import type { Infra } from './infra';
import { freePort, startProc, stopProc, waitUntil, type Proc } from './procs';

const ROOT = resolve(__dirname, '..', '..');
export const INTERNAL_TOKEN = 'faults-internal-token-0123456789abcdef';
export const JWT_SECRET = 'faults-jwt-secret-0123456789abcdef0123456789';

/** Short timings so that a scenario recovers in seconds. */
export const TIMINGS = {
  LEASE_MS: 2000,
  HEARTBEAT_MS: 500,
  SWEEP_INTERVAL_MS: 500,
  SYNC_INTERVAL_MS: 2000,
  FORWARD_TIMEOUT_MS: 1000,
  REQUEST_TIMEOUT_MS: 2000,
  PUBLISH_TIMEOUT_MS: 3000,
} as const;

export interface Node {
  readonly name: string;
  readonly port: number;
  readonly url: string;
  readonly proc: Proc;
  /** starts (again) on the same port and waits until /health answers 200 */
  start(): Promise<number>;
  kill(sig: NodeJS.Signals): void;
  /** graceful stop (SIGTERM), SIGKILL after the grace */
  stop(sig?: NodeJS.Signals): Promise<number | string>;
  health(): Promise<{ status: number; body: Record<string, unknown> }>;
  /** resident memory in bytes (Linux) */
  rss(): number;
  /** GET /metrics (Prometheus text), with the internal token */
  metrics(): Promise<string>;
  /** bytes of JavaScript heap in use right after a full garbage collection (over the inspector: the process runs with --inspect on a free port) */
  heapAfterGc(): Promise<number>;
}

/** Asks a process's inspector (CDP) for a full collection, then for the heap in use. */
async function heapAfterGcOf(inspectorUrl: string): Promise<number> {
  const ws = new WebSocket(inspectorUrl);
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    let id = 0;
    const call = (method: string) =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        const my = ++id;
        const timer = setTimeout(() => reject(new Error(`inspector: no answer to ${method} within 10 s`)), 10_000);
        const onMessage = (data: WebSocket.RawData) => {
          const msg = JSON.parse(data.toString()) as { id?: number; result?: Record<string, unknown>; error?: { message: string } };
          if (msg.id !== my) return;
          clearTimeout(timer);
          ws.off('message', onMessage);
          if (msg.error) reject(new Error(`inspector: ${method}: ${msg.error.message}`));
          else resolve(msg.result ?? {});
        };
        ws.on('message', onMessage);
        ws.send(JSON.stringify({ id: my, method }));
      });
    await call('HeapProfiler.collectGarbage');
    const usage = await call('Runtime.getHeapUsage');
    return Number(usage.usedSize);
  } finally {
    ws.terminate();
  }
}

/** The value of the first sample whose name ends with `name` and whose labels contain `labels` (e.g. 'code="1013"'); 0 when absent. */
export function metricValue(text: string, name: string, labels = ''): number {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || !(m[1] as string).endsWith(name)) continue;
    if (labels && !(m[2] ?? '').includes(labels)) continue;
    return Number(m[3]);
  }
  return 0;
}

export interface Cluster {
  tag: string;
  discover: Node;
  persist: Node;
  /** every SvPersist: `persist` first, then the others of ClusterOptions.persistCount */
  persists: Node[];
  ws: Node[];
  /** ws:// URLs of the instances, in order */
  wsUrls: string[];
  databaseUrl: string;
  keyPrefix: string;
  queuePrefix: string;
  token(userId: string): Promise<string>;
  /** POST /internal/lookup on SvDiscover */
  lookup(users: string[]): Promise<Map<string, string[]>>;
  query<T extends Record<string, unknown>>(sql: string, params?: unknown[]): Promise<T[]>;
  stop(): Promise<void>;
}

export interface ClusterOptions {
  tag: string;
  env?: Record<string, string>;
  wsEnv?: Record<string, string>[];
  persistEnv?: Record<string, string>;
  /** SvPersist processes (default 1), all on the same queues and database */
  persistCount?: number;
  /** each process with an inspector on a free port, for heapAfterGc (default true) */
  inspect?: boolean;
  /** fixed ports instead of free ones: discover, the SvPersist ones, then the gateways */
  ports?: { discover: number; persist: number[]; ws: [number, number] };
}

/** What a cluster needs of the infrastructure: Redis and RabbitMQ URLs, a database per scenario, a directory for logs. */
export type ClusterInfra = Pick<Infra, 'createScenarioDb' | 'dir' | 'redisCluster'> & { redis: { url: string }; rabbit: { url: string } };

function rssOf(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export async function startCluster(infra: ClusterInfra, options: ClusterOptions): Promise<Cluster> {
  const tag = options.tag;
  const databaseUrl = await infra.createScenarioDb(`sc_${tag}`);
  const keyPrefix = `scf:${tag}:`;
  const queuePrefix = `scf.${tag}.`;
  const persistCount = options.persistCount ?? 1;
  const free = await Promise.all(Array.from({ length: 3 + persistCount }, () => freePort()));
  const discoverPort = options.ports?.discover ?? (free[0] as number);
  const persistPorts = options.ports?.persist ?? free.slice(1, 1 + persistCount);
  const persistPort = persistPorts[0] as number;
  const [ws1Port, ws2Port] = options.ports?.ws ?? free.slice(1 + persistCount);
  const discoverUrl = `http://127.0.0.1:${discoverPort}`;
  const persistUrl = `http://127.0.0.1:${persistPort}`;
  const common: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    ENV_FILE: '/nonexistent',
    ENVIRONMENT: 'test',
    LOG_LEVEL: 'info',
    INTERNAL_TOKEN,
    JWT_SECRET,
    REDIS_URL: infra.redis.url,
    ...(infra.redisCluster ? { REDIS_CLUSTER_NODES: infra.redisCluster.seeds } : {}),
    AMQP_URL: infra.rabbit.url,
    DATABASE_URL: databaseUrl,
    KEY_PREFIX: keyPrefix,
    QUEUE_PREFIX: queuePrefix,
    DISCOVER_URL: discoverUrl,
    PERSIST_URL: persistUrl,
    LEASE_MS: String(TIMINGS.LEASE_MS),
    HEARTBEAT_MS: String(TIMINGS.HEARTBEAT_MS),
    SWEEP_INTERVAL_MS: String(TIMINGS.SWEEP_INTERVAL_MS),
    SYNC_INTERVAL_MS: String(TIMINGS.SYNC_INTERVAL_MS),
    FORWARD_TIMEOUT_MS: String(TIMINGS.FORWARD_TIMEOUT_MS),
    REQUEST_TIMEOUT_MS: String(TIMINGS.REQUEST_TIMEOUT_MS),
    PUBLISH_TIMEOUT_MS: String(TIMINGS.PUBLISH_TIMEOUT_MS),
    REDIS_TIMEOUT_MS: '1000',
    RATE_LIMIT_PER_SEC: '1000',
    RATE_LIMIT_BURST: '1000',
    SHUTDOWN_TIMEOUT_MS: '10000',
    ...options.env,
  };

  function node(name: string, script: string, port: number, args: string[], env: Record<string, string>): Node {
    let proc: Proc | undefined;
    const url = `http://127.0.0.1:${port}`;
    const logFile = join(infra.dir, `${tag}-${name}.log`);
    const self: Node = {
      name,
      port,
      url,
      get proc() {
        if (!proc) throw new Error(`${name} not started`);
        return proc;
      },
      async start() {
        const t0 = Date.now();
        proc = startProc(name, process.execPath, [...(options.inspect === false ? [] : ['--inspect=127.0.0.1:0']), join(ROOT, script), '--port', String(port), ...args], { env: { ...common, ...env }, cwd: ROOT, logFile });
        const p = proc;
        await waitUntil(
          `${name} healthy`,
          async () => {
            if (!p.isRunning()) throw new Error(`${name} exited (${await p.exited}):\n${p.tail(20)}`);
            return (await self.health()).status === 200;
          },
          30_000,
          100,
        );
        return Date.now() - t0;
      },
      kill(sig) {
        proc?.signal(sig);
      },
      async stop(sig = 'SIGTERM') {
        return proc ? stopProc(proc, sig, 15_000) : 'not started';
      },
      async health() {
        const res = await request(`${url}/health`, { signal: AbortSignal.timeout(2000) });
        const body = (await res.body.json().catch(() => ({}))) as Record<string, unknown>;
        return { status: res.statusCode, body };
      },
      rss: () => (proc ? rssOf(proc.pid) : 0),
      async metrics() {
        const res = await request(`${url}/metrics`, { headers: { authorization: `Bearer ${INTERNAL_TOKEN}` }, signal: AbortSignal.timeout(2000) });
        const text = await res.body.text();
        if (res.statusCode !== 200) throw new Error(`${name} /metrics answered ${res.statusCode}`);
        return text;
      },
      async heapAfterGc() {
        // Node prints where its inspector listens; the last such line is the current process's.
        const urls = [...readFileSync(logFile, 'utf8').matchAll(/Debugger listening on (ws:\/\/\S+)/g)];
        const inspector = urls.at(-1)?.[1];
        if (!inspector) throw new Error(`${name}: no inspector address in ${logFile}`);
        return heapAfterGcOf(inspector);
      },
    };
    return self;
  }

  const discover = node('discover', 'SvDiscover/dist/main.js', discoverPort as number, [], {});
  const persists = persistPorts.map((port, i) => node(i === 0 ? 'persist' : `persist-${i + 1}`, 'SvPersist/dist/main.js', port, [], options.persistEnv ?? {}));
  const persist = persists[0] as Node;
  const ws = [ws1Port, ws2Port].map((port, i) => node(`ws-${i + 1}`, 'SvWebsocket/dist/main.js', port as number, ['--instance-id', `ws-${i + 1}`], { WS_HOST: '127.0.0.1', ...(options.wsEnv?.[i] ?? {}) }));

  let db: Client | undefined;
  async function query<T extends Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> {
    if (!db) {
      const c = new Client({ connectionString: databaseUrl, connectionTimeoutMillis: 3000 });
      c.on('error', () => undefined);
      await c.connect();
      db = c;
    }
    try {
      return (await db.query(sql, params)).rows as T[];
    } catch (err) {
      const old = db;
      db = undefined;
      await old.end().catch(() => undefined);
      throw err;
    }
  }

  const all = [discover, ...persists, ...ws];
  const cluster: Cluster = {
    tag,
    discover,
    persist,
    persists,
    ws,
    wsUrls: ws.map((w) => `ws://127.0.0.1:${w.port}/ws`),
    databaseUrl,
    keyPrefix,
    queuePrefix,
    token: (userId) =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(userId)
        .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
        .sign(new TextEncoder().encode(JWT_SECRET)),
    async lookup(users) {
      const res = await request(`${discoverUrl}/internal/lookup`, {
        method: 'POST',
        headers: { authorization: `Bearer ${INTERNAL_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ users }),
        signal: AbortSignal.timeout(2000),
      });
      if (res.statusCode !== 200) {
        await res.body.dump();
        throw new Error(`lookup answered ${res.statusCode}`);
      }
      const body = (await res.body.json()) as { users: Record<string, { instanceId: string }[]> };
      return new Map(Object.entries(body.users).map(([u, refs]) => [u, refs.map((r) => r.instanceId)]));
    },
    query,
    async stop() {
      await Promise.all(all.map((n) => n.stop('SIGKILL').catch(() => undefined)));
      await db?.end().catch(() => undefined);
      db = undefined;
    },
  };
  try {
    await Promise.all([discover.start(), persist.start()]);
    // One after another: the first to consume a partition is its active consumer, the others stand by.
    for (const p of persists.slice(1)) await p.start();
    await Promise.all(ws.map((w) => w.start()));
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

/** Creates a room as the user of `token`, through a gateway's WebSocket; resolves with its id. */
export async function createRoom(url: string, token: string, name: string, members: string[]): Promise<string> {
  const s = await ProtocolSocket.open(url);
  try {
    await s.register(token);
    const info = await s.request({ type: 'room.create', name, members });
    if (info.type !== 'room.info' || typeof info.room !== 'string') throw new Error(`room.create answered ${JSON.stringify(info)}`);
    return info.room;
  } finally {
    s.close();
  }
}
