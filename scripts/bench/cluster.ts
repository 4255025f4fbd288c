/**
 * A private SimpleChat cluster for one benchmark run: its own database
 * (created and migrated here, dropped at the end), Redis key prefix, queue
 * prefix, secrets and free loopback ports; SvDiscover, SvPersist and the
 * SvWebsocket instances as compiled processes (one SvPersist, or several
 * sharing the partitions' queues), every option set explicitly
 * (ENV_FILE=/nonexistent), limits raised for load (rate limits per user and
 * per room, connections per address), a Server API key for setting up rooms.
 * close() removes everything it made.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
import { request } from 'undici';
import { createClient } from 'redis';
import amqp from 'amqplib';
import { createDatabase, dropDatabase, migrate } from '../lib/db';
import { ROOT } from '../lib/env';
import { deleteTopology, topology, type QueueType } from '../../shared/src/amqp';
import { deleteNotifyTopology, notifyTopology } from '../../SvPersist/src/notify-topology';
import { baseEnv, spawnNode, type Child } from './children';

export interface ClusterOptions {
  runId: string;
  redisUrl: string;
  amqpUrl: string;
  /** the nodes of a RabbitMQ cluster (AMQP_URLS of every service; cleanup goes through the first); absent: amqpUrl alone */
  amqpUrls?: string[];
  /** QUEUE_PARTITIONS of every service (default: the services' default, 1) */
  partitions?: number;
  /** QUEUE_TYPE of every service (default: the services' default, quorum) */
  queueType?: QueueType;
  /** SvPersist instances (default 1: named persist; more: persist-1, persist-2, ...) */
  persistCount?: number;
  /** any database URL on the server; the run's database gets its own name */
  databaseUrl: string;
  /** extra variables for every service (--env K=V) */
  extraEnv: Record<string, string>;
  /** node flags for the SvWebsocket processes (e.g. --cpu-prof) */
  wsNodeFlags: string[];
  persistNodeFlags: string[];
  discoverNodeFlags: string[];
  /** SvWebsocket instances to start (ws-1 ... ws-N) */
  gateways: number;
  /** open files each SvWebsocket needs */
  wsNofile: number;
  log(line: string): void;
}

export interface Cluster {
  databaseUrl: string;
  keyPrefix: string;
  queuePrefix: string;
  jwtSecret: string;
  internalToken: string;
  /** a key of the gateways' Server API (/api/v1) */
  serverApiKey: string;
  /** HTTP base URL of each running service, by process name */
  httpUrls(): Record<string, string>;
  discover: Child;
  /** the first SvPersist */
  persist: Child;
  /** every SvPersist of the cluster (the current process of each) */
  persists: Child[];
  ws: Child[];
  wsUrls: string[];
  /** starts another SvWebsocket instance; resolves once healthy */
  addWs(instanceId: string): Promise<{ child: Child; url: string; httpUrl: string }>;
  stopWs(child: Child): Promise<void>;
  /** SIGKILL, on purpose (not reported as a crash): no goodbye, its claims lapse with its lease; resolves once it exited */
  killWs(child: Child): Promise<void>;
  /** stops every SvPersist */
  stopPersist(): Promise<void>;
  /** starts every SvPersist again; resolves once all are healthy */
  startPersist(): Promise<Child[]>;
  /** every service process started, stopped ones included */
  children(): Child[];
  /** services that exited on their own (crashes) */
  crashed(): Child[];
  close(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

export async function waitHealthy(url: string, child: Child | undefined, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (child?.exited) throw new Error(`${child.name} exited (${child.exitSignal ?? `code ${child.exitCode}`}) while starting: ${child.tail.slice(-5).join(' | ')}`);
    try {
      const res = await request(url, { headersTimeout: 1000, bodyTimeout: 1000 });
      const text = await res.body.text();
      if (res.statusCode === 200) return;
      last = `HTTP ${res.statusCode} ${text.slice(0, 200)}`;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${url} not healthy within ${timeoutMs} ms (${last})${child ? `: ${child.tail.slice(-5).join(' | ')}` : ''}`);
}

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  const db = new URL(opts.databaseUrl);
  db.pathname = `/sc_bench_${opts.runId}`;
  const databaseUrl = db.toString();
  const keyPrefix = `scbench:${opts.runId}:`;
  const queuePrefix = `scbench.${opts.runId}.`;
  const jwtSecret = randomBytes(24).toString('hex');
  const internalToken = randomBytes(24).toString('hex');
  const serverApiKey = randomBytes(24).toString('hex');
  const children: Child[] = [];
  const urls = new Map<Child, string>();
  const persistCount = opts.persistCount ?? 1;
  const persistNames = persistCount === 1 ? ['persist'] : Array.from({ length: persistCount }, (_, i) => `persist-${i + 1}`);
  let persists: Child[] = [];
  let closing: Promise<void> | undefined;

  const common = {
    ENVIRONMENT: 'development',
    LOG_LEVEL: 'warn',
    INTERNAL_TOKEN: internalToken,
    REDIS_URL: opts.redisUrl,
    AMQP_URL: opts.amqpUrls?.[0] ?? opts.amqpUrl,
    ...(opts.amqpUrls ? { AMQP_URLS: opts.amqpUrls.join(',') } : {}),
    ...(opts.partitions !== undefined ? { QUEUE_PARTITIONS: String(opts.partitions) } : {}),
    ...(opts.queueType ? { QUEUE_TYPE: opts.queueType } : {}),
    DATABASE_URL: databaseUrl,
    KEY_PREFIX: keyPrefix,
    QUEUE_PREFIX: queuePrefix,
  };

  async function cleanup(): Promise<void> {
    const problems: string[] = [];
    await dropDatabase(databaseUrl).catch((e: unknown) => problems.push(`drop database: ${String(e)}`));
    try {
      const redis = createClient({ url: opts.redisUrl, socket: { connectTimeout: 3000, reconnectStrategy: false } });
      redis.on('error', () => undefined);
      await redis.connect();
      for await (const keys of redis.scanIterator({ MATCH: `${keyPrefix}*`, COUNT: 1000 })) if (keys.length) await redis.del(keys);
      await redis.close();
    } catch (e) {
      problems.push(`redis keys: ${String(e)}`);
    }
    try {
      const conn = await amqp.connect(opts.amqpUrls?.[0] ?? opts.amqpUrl, { timeout: 5000 });
      conn.on('error', () => undefined);
      const ch = await conn.createChannel();
      ch.on('error', () => undefined);
      const t = topology(queuePrefix, { partitions: opts.partitions ?? 1 });
      await deleteTopology(ch, t);
      // declared only when --env turns notifications on; deleting what does not exist is no error
      await deleteNotifyTopology(ch, notifyTopology(queuePrefix));
      await conn.close();
    } catch (e) {
      problems.push(`queues: ${String(e)}`);
    }
    if (problems.length) opts.log(`cleanup: ${problems.join('; ')}`);
  }

  try {
    await createDatabase(databaseUrl);
    await migrate(databaseUrl);
    const discoverPort = await freePort();
    const persistPorts = await Promise.all(persistNames.map(() => freePort()));
    const discoverUrl = `http://127.0.0.1:${discoverPort}`;
    const persistUrls = persistPorts.map((p) => `http://127.0.0.1:${p}`);
    // the gateways read from the first SvPersist
    const env = (extra: Record<string, string>) => baseEnv({ ...common, DISCOVER_URL: discoverUrl, PERSIST_URL: persistUrls[0] as string, ...extra, ...opts.extraEnv });

    const discover = spawnNode('discover', resolve(ROOT, 'SvDiscover/dist/main.js'), { args: ['--port', String(discoverPort), '--host', '127.0.0.1'], env: env({}), nodeFlags: opts.discoverNodeFlags });
    children.push(discover);
    urls.set(discover, discoverUrl);
    const spawnPersist = (i: number) => {
      const p = spawnNode(persistNames[i] as string, resolve(ROOT, 'SvPersist/dist/main.js'), { args: ['--port', String(persistPorts[i]), '--host', '127.0.0.1'], env: env({}), nodeFlags: opts.persistNodeFlags });
      children.push(p);
      urls.set(p, persistUrls[i] as string);
      return p;
    };
    const startPersists = async () => {
      persists = persistNames.map((_, i) => spawnPersist(i));
      await Promise.all(persists.map((p, i) => waitHealthy(`${persistUrls[i]}/health`, p, 30_000)));
      return persists;
    };
    await Promise.all([waitHealthy(`${discoverUrl}/health`, discover, 30_000), startPersists()]);

    const wsEnv = () =>
      env({
        JWT_SECRET: jwtSecret,
        RATE_LIMIT_PER_SEC: '100000',
        RATE_LIMIT_BURST: '100000',
        // one sender drives a room at the bench's stepped rates
        ROOM_RATE_LIMIT_PER_SEC: '100000',
        SERVER_API_KEYS: serverApiKey,
        MAX_CONNECTIONS_PER_IP: '1000000',
        MAX_CONNECTIONS_PER_USER: '20',
      });
    const addWs = async (instanceId: string) => {
      const port = await freePort();
      const child = spawnNode(instanceId, resolve(ROOT, 'SvWebsocket/dist/main.js'), {
        args: ['--port', String(port), '--host', '127.0.0.1', '--instance-id', instanceId],
        env: wsEnv(),
        nodeFlags: opts.wsNodeFlags,
        nofile: opts.wsNofile,
      });
      children.push(child);
      const httpUrl = `http://127.0.0.1:${port}`;
      urls.set(child, httpUrl);
      await waitHealthy(`${httpUrl}/health`, child, 30_000);
      return { child, url: `ws://127.0.0.1:${port}/ws`, httpUrl };
    };
    const started = await Promise.all(Array.from({ length: opts.gateways }, (_, i) => addWs(`ws-${i + 1}`)));
    const ws = started.map((g) => g.child);
    const wsUrls = started.map((g) => g.url);

    /** stopped on purpose: not a crash */
    const stopped = new Set<Child>();
    const cluster: Cluster = {
      databaseUrl,
      keyPrefix,
      queuePrefix,
      jwtSecret,
      internalToken,
      serverApiKey,
      httpUrls: () => Object.fromEntries([...urls].filter(([c]) => !c.exited).map(([c, u]) => [c.name, u])),
      discover,
      get persist() {
        return persists[0] as Child;
      },
      get persists() {
        return persists;
      },
      ws,
      wsUrls,
      addWs,
      async stopWs(child) {
        stopped.add(child);
        await child.stop(15_000);
      },
      async killWs(child) {
        stopped.add(child);
        child.proc.kill('SIGKILL');
        await child.exitedPromise;
      },
      async stopPersist() {
        for (const p of persists) stopped.add(p);
        await Promise.all(persists.map((p) => p.stop(20_000)));
      },
      startPersist: startPersists,
      children: () => [...children],
      crashed: () => children.filter((c) => c.exited && !stopped.has(c)),
      close() {
        closing ??= (async () => {
          // Gateways first (they flush confirms and drop claims), then the rest; bounded.
          const gateways = children.filter((c) => c.name.startsWith('ws-'));
          for (const c of children) stopped.add(c);
          await Promise.all(gateways.map((c) => c.stop(15_000)));
          await Promise.all(children.filter((c) => !gateways.includes(c)).map((c) => c.stop(15_000)));
          await cleanup();
        })();
        return closing;
      },
    };
    return cluster;
  } catch (err) {
    await Promise.all(children.map((c) => c.stop(5000)));
    await cleanup();
    throw err;
  }
}
