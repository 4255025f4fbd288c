/**
 * A whole SimpleChat cluster built in-process for integration tests: SvDiscover,
 * SvPersist and N SvWebsocket instances on port 0, against the real Redis,
 * RabbitMQ and Postgres, with this file's own key prefix and queue names.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll } from 'vitest';
import { SignJWT } from 'jose';
import { Client } from 'pg';
import amqp from 'amqplib';
import { createClient } from 'redis';
import { createLogger, deleteTopology, topology, ProtocolSocket, parseHostPorts, type Logger } from '@simplechat/shared';
import { createRedisConnection, type RedisConnection } from '@simplechat/shared';
import { createDiscoverService, type DiscoverService } from '../SvDiscover/src/app';
import { createPersistService, type PersistService, type PersistServiceDeps } from '../SvPersist/src/app';
import { deleteNotifyTopology, notifyTopology, type RetrySchedule } from '../SvPersist/src/notify-topology';
import { loadPersistConfig } from '../SvPersist/src/config';
import { createWebsocketService, type WebsocketService } from '../SvWebsocket/src/app';
import { loadWsConfig } from '../SvWebsocket/src/config';
import { isolation, INTERNAL_TOKEN, JWT_SECRET } from './helpers';
import { services } from './services';

export interface ClusterOptions {
  wsCount?: number;
  /** environment-style overrides for every SvWebsocket (e.g. { RATE_LIMIT_PER_SEC: '2' }) */
  wsEnv?: Record<string, string>;
  leaseMs?: number;
  persist?: boolean;
  /** logger for every service (tests that inspect logs pass one writing to memory) */
  log?: Logger;
  /** address SvDiscover and SvPersist bind and are reached at (default 127.0.0.1) */
  host?: string;
  /** environment-style overrides for SvPersist (e.g. { NOTIFY_WEBHOOK_URL: '...' }) */
  persistEnv?: Record<string, string>;
  /** another database than the run's (a test file whose work covers every conversation, as notifications do) */
  databaseUrl?: string;
  /** extra deps of SvPersist (tests of notifications shorten its retry schedule) */
  persistDeps?: Pick<PersistServiceDeps, 'notifyRetrySchedule'>;
  /** REDIS_CLUSTER_NODES of SvDiscover and every SvWebsocket: a Redis Cluster instead of the test Redis */
  redisClusterNodes?: string;
}

export interface TestCluster {
  ws: WebsocketService[];
  discoverUrl: string;
  persistUrl: string;
  persist?: PersistService;
  keyPrefix: string;
  queuePrefix: string;
  databaseUrl: string;
  log: Logger;
  wsUrl(i?: number): string;
  httpUrl(i?: number): string;
  token(userId: string, opts?: { ttlSec?: number; secret?: string }): Promise<string>;
  /** opens /ws on instance i and registers as userId */
  connect(userId: string, i?: number): Promise<ProtocolSocket>;
  addWs(env?: Record<string, string>): Promise<WebsocketService>;
  /** stops SvPersist (nothing answers at persistUrl) until restartPersist() starts a new one there */
  stopPersist(): Promise<void>;
  /** a new SvPersist at persistUrl; `env` changes its settings from then on */
  restartPersist(env?: Record<string, string>): Promise<void>;
  db: Client;
  close(): Promise<void>;
}

/** A real service process (its dist/main.js) joined to a test cluster. */
export interface ServiceProcess {
  port: number;
  proc: ChildProcess;
  /** its log lines (JSON) and anything else it printed */
  lines: string[];
  /** SIGKILL (no goodbye, no drain); resolves once it exited */
  kill(): Promise<void>;
}

/** A real SvWebsocket process joined to a test cluster. */
export interface GatewayProcess extends ServiceProcess {
  url: string;
}

/**
 * Starts a service's compiled entry point with `env` (nothing inherited but what `env` holds);
 * resolves once it logs that it listens. Its kill() is what a caller's cleanup should run.
 */
export function startServiceProcess(service: 'SvWebsocket' | 'SvPersist', env: NodeJS.ProcessEnv): Promise<ServiceProcess> {
  const proc = spawn(process.execPath, [resolve(ROOT, `${service}/dist/main.js`)], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const kill = () => new Promise<void>((r) => (proc.exitCode !== null || proc.signalCode !== null ? r() : (proc.once('exit', () => r()), proc.kill('SIGKILL'))));
  const lines: string[] = [];
  return new Promise((resolvePort, reject) => {
    proc.once('exit', (code) => reject(new Error(`${service} exited with ${code}: ${lines.join('\n')}`)));
    createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on('line', (line) => lines.push(line));
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      lines.push(line);
      try {
        const rec = JSON.parse(line) as { msg?: string; port?: number };
        if (rec.msg === `${service} listening` && rec.port) resolvePort({ port: rec.port, proc, lines, kill });
      } catch {
        // not a log line
      }
    });
  });
}

/** Starts SvWebsocket's compiled entry point with the cluster's environment plus `env`. */
export async function startGatewayProcess(c: Pick<TestCluster, 'discoverUrl' | 'persistUrl' | 'keyPrefix' | 'queuePrefix'>, env: Record<string, string>): Promise<GatewayProcess> {
  const started = await startServiceProcess('SvWebsocket', wsProcessEnv(c, { WS_PORT: '0', ...env }));
  return { ...started, url: `ws://127.0.0.1:${started.port}/ws` };
}

/** What every service process of a test starts with: no .env, test settings, the internal token, PATH only. */
function baseProcessEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '', ENV_FILE: '/nonexistent', ENVIRONMENT: 'test', LOG_LEVEL: 'info', INTERNAL_TOKEN };
}

/**
 * The environment of a real SvPersist process (dist/main.js) beside this cluster's: its
 * database, broker and queues, test secrets, nothing inherited but PATH; `extra` adds or overrides.
 */
export function persistProcessEnv(c: Pick<TestCluster, 'databaseUrl' | 'queuePrefix'>, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    ...baseProcessEnv(),
    PERSIST_PORT: '0',
    PERSIST_HOST: '127.0.0.1',
    DATABASE_URL: c.databaseUrl,
    AMQP_URL: services().amqpUrl,
    QUEUE_PREFIX: c.queuePrefix,
    ...extra,
  };
}

const ROOT = resolve(__dirname, '..');

let userSeq = 0;
/** A user id unique to this run (all test files share one database). */
export function uid(name: string): string {
  return `${name}-${process.pid}-${Date.now().toString(36)}-${++userSeq}`;
}

/**
 * The environment of a real SvWebsocket process (dist/main.js) joining this
 * cluster: its SvDiscover, SvPersist, Redis prefix and queues, test secrets,
 * nothing inherited from the caller but PATH; `extra` adds or overrides.
 */
export function wsProcessEnv(c: Pick<TestCluster, 'discoverUrl' | 'persistUrl' | 'keyPrefix' | 'queuePrefix'>, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const { redisUrl, amqpUrl } = services();
  return {
    ...baseProcessEnv(),
    WS_HOST: '127.0.0.1',
    JWT_SECRET,
    DISCOVER_URL: c.discoverUrl,
    PERSIST_URL: c.persistUrl,
    REDIS_URL: redisUrl,
    AMQP_URL: amqpUrl,
    KEY_PREFIX: c.keyPrefix,
    QUEUE_PREFIX: c.queuePrefix,
    ...extra,
  };
}

export async function startCluster(options: ClusterOptions = {}): Promise<TestCluster> {
  const iso = { ...isolation(), ...(options.databaseUrl ? { databaseUrl: options.databaseUrl } : {}) };
  const log = options.log ?? createLogger('test', (process.env.TEST_LOG_LEVEL as 'info') ?? 'silent');
  const clusterNodes = options.redisClusterNodes ? parseHostPorts(options.redisClusterNodes) : [];
  if (typeof clusterNodes === 'string') throw new Error(`redisClusterNodes: ${clusterNodes}`);
  const redis: RedisConnection = createRedisConnection({ url: iso.redisUrl, clusterNodes, log, commandTimeoutMs: 2000 });
  const discover: DiscoverService = createDiscoverService({
    redis: redis.client,
    redisUrl: redis.url,
    keyPrefix: iso.keyPrefix,
    leaseMs: options.leaseMs ?? 3000,
    sweepIntervalMs: 500,
    redisTimeoutMs: 2000,
    internalTokens: [INTERNAL_TOKEN],
    log,
  });
  const host = options.host ?? '127.0.0.1';
  const discoverPort = await discover.listen(0, host);
  let persist: PersistService | undefined;
  let persistPort = 1; // nothing listens there: storage "down"
  let persistEnv: Record<string, string> = { INTERNAL_TOKEN, DATABASE_URL: iso.databaseUrl, AMQP_URL: iso.amqpUrl, QUEUE_PREFIX: iso.queuePrefix, MAX_BATCH_DELAY_MS: '5', ...options.persistEnv };
  const newPersist = () => createPersistService({ config: loadPersistConfig({ argv: [], envFile: false, env: persistEnv }), log, ...options.persistDeps });
  if (options.persist !== false) {
    persist = newPersist();
    persistPort = await persist.listen(0, host);
  }
  const discoverUrl = `http://${host}:${discoverPort}`;
  const persistUrl = `http://${host}:${persistPort}`;
  const ws: WebsocketService[] = [];

  async function addWs(env: Record<string, string> = {}): Promise<WebsocketService> {
    const cfg = loadWsConfig({
      argv: [],
      envFile: false,
      env: {
        ENVIRONMENT: 'development',
        WS_PORT: '0',
        WS_HOST: '127.0.0.1',
        INSTANCE_ID: `ws-${ws.length + 1}`,
        INTERNAL_TOKEN,
        JWT_SECRET,
        DISCOVER_URL: discoverUrl,
        PERSIST_URL: persistUrl,
        REDIS_URL: iso.redisUrl,
        AMQP_URL: iso.amqpUrl,
        KEY_PREFIX: iso.keyPrefix,
        QUEUE_PREFIX: iso.queuePrefix,
        HEARTBEAT_MS: '500',
        RATE_LIMIT_PER_SEC: '1000',
        RATE_LIMIT_BURST: '1000',
        ...(options.redisClusterNodes ? { REDIS_CLUSTER_NODES: options.redisClusterNodes } : {}),
        ...options.wsEnv,
        ...env,
      },
    });
    const service = await createWebsocketService(cfg, log);
    ws.push(service);
    return service;
  }
  for (let i = 0; i < (options.wsCount ?? 2); i++) await addWs();
  const db = new Client({ connectionString: iso.databaseUrl });
  await db.connect();

  const cluster: TestCluster = {
    ws,
    discoverUrl,
    persistUrl,
    persist,
    keyPrefix: iso.keyPrefix,
    queuePrefix: iso.queuePrefix,
    databaseUrl: iso.databaseUrl,
    log,
    wsUrl: (i = 0) => `ws://127.0.0.1:${ws[i]?.port}/ws`,
    httpUrl: (i = 0) => `http://127.0.0.1:${ws[i]?.port}`,
    token: (userId, opts = {}) =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(userId)
        .setExpirationTime(Math.floor(Date.now() / 1000) + (opts.ttlSec ?? 3600))
        .sign(new TextEncoder().encode(opts.secret ?? JWT_SECRET)),
    async connect(userId, i = 0) {
      const s = await ProtocolSocket.open(cluster.wsUrl(i));
      const reg = await s.register(await cluster.token(userId));
      if (reg.type !== 'registered') throw new Error(`register failed: ${JSON.stringify(reg)}`);
      return s;
    },
    addWs,
    async stopPersist() {
      await persist?.close();
      persist = undefined;
      cluster.persist = undefined;
    },
    async restartPersist(env = {}) {
      await cluster.stopPersist();
      persistEnv = { ...persistEnv, ...env };
      persist = newPersist();
      await persist.listen(persistPort, host);
      cluster.persist = persist;
    },
    db,
    async close() {
      await Promise.all(ws.map((w) => w.close()));
      await persist?.close();
      await discover.close();
      await db.end();
      await redis.close();
      await removeIsolated(iso, options.persistDeps?.notifyRetrySchedule);
    },
  };
  return cluster;
}

/** Leaves nothing behind of a test's isolation: its Redis keys, its queues and its exchange. */
export async function removeIsolated(iso: { redisUrl: string; amqpUrl: string; keyPrefix: string; queuePrefix: string }, notifySchedule?: RetrySchedule, partitions = 1): Promise<void> {
  const redis = await createClient({ url: iso.redisUrl }).connect();
  try {
    for await (const keys of redis.scanIterator({ MATCH: `${iso.keyPrefix}*`, COUNT: 1000 })) if (keys.length) await redis.del(keys);
  } finally {
    await redis.quit();
  }
  const conn = await amqp.connect(iso.amqpUrl);
  try {
    const ch = await conn.createChannel();
    const t = topology(iso.queuePrefix, { partitions });
    await deleteTopology(ch, t);
    await deleteNotifyTopology(ch, notifyTopology(iso.queuePrefix, notifySchedule));
  } finally {
    await conn.close();
  }
}

/**
 * The cluster of one test file: started before its tests and closed after them, with every
 * connection the tests opened through `connect`.
 */
export function clusterPerFile(options: ClusterOptions = {}): { readonly c: TestCluster; connect(userId: string, i?: number): Promise<ProtocolSocket> } {
  let cluster: TestCluster | undefined;
  const open: ProtocolSocket[] = [];
  beforeAll(async () => {
    cluster = await startCluster(options);
  });
  afterAll(async () => {
    for (const s of open) s.close();
    await cluster?.close();
  });
  return {
    get c() {
      if (!cluster) throw new Error('the cluster starts in beforeAll');
      return cluster;
    },
    async connect(userId, i = 0) {
      const s = await this.c.connect(userId, i);
      open.push(s);
      return s;
    },
  };
}
