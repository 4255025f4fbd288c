/**
 * The Redis connection: one node (REDIS_URL) or a Redis Cluster
 * (REDIS_CLUSTER_NODES), behind one narrow type, `Redis`, so that domain
 * modules do not care which they got. Either way it reconnects forever with
 * capped backoff, rejects commands at once while a node is unreachable
 * (node-redis would otherwise queue them and an HTTP request would hang for
 * the whole outage), bounds every command with a timeout (a hung Redis), and
 * logs outages once, not once per retry.
 *
 * On a cluster every script and multi-key command must touch one slot: key
 * names carry `tag(group)` (`{group}`, empty on one node, where any keys may
 * go together) and callers group their keys by `slotOf(key)` (always 0 on one
 * node), one call per group, issued together (node-redis pipelines the calls
 * of one tick per node, so one node still costs one round trip).
 *
 * node-redis refreshes a cluster's slot map only when a node answers MOVED or
 * ASK; a master that died answers nothing, so its slots would stay unreachable
 * after a replica took them over (redis/node-redis#2806). While a master is
 * unreachable, and every TOPOLOGY_REFRESH_MS anyway, the map is asked for again.
 */
import { lookup } from 'node:dns/promises';
import calculateSlot = require('cluster-key-slot');
import { ClientOfflineError, createClient, createCluster } from 'redis';
import { backoffMs } from './time';
import { ConfigError, errorMessage, isLoginRefused } from './errors';
import type { Logger } from './log';
import { createLogThrottle } from './log-throttle';

export type RedisClient = ReturnType<typeof createClient>;
type RedisClusterClient = ReturnType<typeof createCluster>;

export interface ScriptOptions {
  keys: string[];
  arguments: string[];
}

/** What SimpleChat uses of Redis; a single node and a cluster both provide it. */
export interface Redis {
  /** commands can run (on a cluster: at least one master is connected) */
  readonly isReady: boolean;
  /** resolves once commands can run for the first time */
  whenReady(): Promise<void>;
  /** a hash tag for keys that must share a slot: `{group}` on a cluster, '' on one node */
  tag(group: string): string;
  /** keys with the same value may go in one script or command (one node: always 0) */
  slotOf(key: string): number;
  eval(script: string, options: ScriptOptions): Promise<unknown>;
  evalSha(sha: string, options: ScriptOptions): Promise<unknown>;
  sMembers(key: string): Promise<string[]>;
  hGetAll(key: string): Promise<Record<string, string>>;
  /** PUBLISH (on a cluster it reaches the subscribers of every node) */
  publish(channel: string, message: string): Promise<unknown>;
  ping(): Promise<unknown>;
  /**
   * A connection of its own for SUBSCRIBE, not connected yet, named `name` (CLIENT LIST shows
   * it); the caller connects and destroys it. On a cluster it goes to one node and gives up once
   * that node stays unreachable (the caller opens another, which may go to another node).
   */
  subscriber(name?: string): RedisClient;
}

export interface RedisConnectionDeps {
  /** one node; on a cluster, the user, password and TLS (rediss:) of every node */
  url: string;
  /** the cluster's seed nodes; empty or unset: one node at `url` */
  clusterNodes?: readonly HostPort[];
  log: Logger;
  /** timeout of one command and of one connection attempt */
  commandTimeoutMs: number;
  /** longest wait between two reconnection attempts */
  maxReconnectDelayMs?: number;
}

export interface RedisConnection {
  readonly client: Redis;
  /** where it connects, without a password, for messages */
  readonly url: string;
  close(): Promise<void>;
}

export interface HostPort {
  host: string;
  port: number;
}

const STILL_DOWN_LOG_INTERVAL_MS = 30_000;
/** how often a cluster's slot map is asked for while nothing fails */
const TOPOLOGY_REFRESH_MS = 10_000;
/** how soon after a node failed, and again while a master is unreachable */
const FAILED_NODE_REFRESH_MS = 250;
/** reconnection attempts of a cluster's pub/sub connection before it gives up on its node */
const SUBSCRIBER_NODE_ATTEMPTS = 3;

/** Items grouped by the slot of their key, each group in the items' order (one node: one group). */
export function bySlot<T>(redis: Pick<Redis, 'slotOf'>, items: readonly T[], keyOf: (item: T) => string): T[][] {
  const groups = new Map<number, T[]>();
  for (const item of items) {
    const slot = redis.slotOf(keyOf(item));
    const group = groups.get(slot);
    if (group) group.push(item);
    else groups.set(slot, [item]);
  }
  return [...groups.values()];
}

/** The bucket (0..count-1) of an id, for hash tags that spread many ids over a few slots. */
export function keyBucket(id: string, count: number): number {
  return calculateSlot(id) % count;
}

/**
 * Lua: the replication id of the master running the script. It changes when a replica takes
 * over (a failover, which may lose the master's latest writes: replication is asynchronous) or
 * a Redis without persistence restarts, so keys that record it tell such a change.
 */
export const LUA_REPLID = `
local function replid()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
end
`;

export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<invalid url>';
  }
}

/** The setting's value as written: `host:port,host:port`. */
export function formatHostPorts(nodes: readonly HostPort[]): string {
  return nodes.map((n) => `${n.host.includes(':') ? `[${n.host}]` : n.host}:${n.port}`).join(',');
}

/** Parses `host:port,host:port` (IPv6 as `[::1]:7000`); returns the problem when it is not that. */
export function parseHostPorts(value: string): HostPort[] | string {
  const items = value.split(',').map((s) => s.trim()).filter(Boolean);
  const out: HostPort[] = [];
  for (const item of items) {
    const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(item);
    const port = Number(m?.[3]);
    if (!m || port < 1 || port > 65535) return `"${item}" is not host:port (for example 10.0.0.5:6379)`;
    out.push({ host: (m[1] ?? m[2]) as string, port });
  }
  return out;
}

/**
 * Every seed's host resolves; throws a ConfigError naming the setting otherwise. A cluster
 * whose nodes are all down at start is waited for (like one node); a name that does not
 * resolve is a mistake in the setting.
 */
export async function checkClusterNodes(nodes: readonly HostPort[], setting = 'REDIS_CLUSTER_NODES'): Promise<void> {
  const bad: string[] = [];
  await Promise.all(
    nodes.map(async (n) => {
      try {
        await lookup(n.host);
      } catch (err) {
        bad.push(`${n.host} (${errorMessage(err)})`);
      }
    }),
  );
  if (bad.length > 0) throw new ConfigError(`invalid configuration: ${setting} names hosts that do not resolve: ${bad.join(', ')}; set it to host:port of reachable Redis Cluster nodes, comma-separated (or leave it empty to use REDIS_URL)`);
}

/** Creates the client(s) and starts connecting in the background; never gives up until close(). */
export function createRedisConnection(deps: RedisConnectionDeps): RedisConnection {
  return deps.clusterNodes && deps.clusterNodes.length > 0 ? connectCluster(deps, deps.clusterNodes) : connectNode(deps);
}

/** Logs the outages of one thing (a node, a cluster) once each, then now and then while they last. */
function outageLog(log: Logger, what: string, setting: string) {
  let hasBeenUp = false;
  let isDown = false;
  const throttle = createLogThrottle(STILL_DOWN_LOG_INTERVAL_MS);
  return {
    get isDown() {
      return isDown;
    },
    down(err: unknown): void {
      const reason = errorMessage(err);
      if (!isDown) {
        isDown = true;
        throttle.reset();
        throttle.shouldLog();
        if (isLoginRefused(err)) log.warn(`${what} refused the login (${reason}); check the user and password in ${setting}; retrying with backoff`);
        else if (hasBeenUp) log.warn(`${what} is down (${reason}); reconnecting with backoff`);
        else log.warn(`${what} is not reachable (${reason}); retrying with backoff`);
      } else if (throttle.shouldLog()) {
        log.warn({ attempts: throttle.count }, `${what} is still unreachable (${reason})`);
      } else {
        log.debug({ attempts: throttle.count }, `${what}: ${reason}`);
      }
    },
    up(): void {
      if (!hasBeenUp || isDown) log.info(`${what} is up`);
      hasBeenUp = true;
      isDown = false;
    },
  };
}

/** close() waits for the replies still pending, which a frozen Redis never sends: bounded. */
async function closeWithin(ms: number, close: () => Promise<unknown>, destroy: () => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  await Promise.race([close().catch(() => undefined), expired]);
  clearTimeout(timer);
  destroy();
}

function connectNode(deps: RedisConnectionDeps): RedisConnection {
  const url = redactUrl(deps.url);
  const maxDelayMs = deps.maxReconnectDelayMs ?? 5_000;
  const client = createClient({
    url: deps.url,
    disableOfflineQueue: true,
    commandOptions: { timeout: deps.commandTimeoutMs },
    socket: {
      connectTimeout: deps.commandTimeoutMs,
      reconnectStrategy: (retries: number) => backoffMs(retries, 100, maxDelayMs),
    },
  });
  const outage = outageLog(deps.log, `redis at ${url}`, 'REDIS_URL');
  client.on('error', (err: unknown) => outage.down(err));
  client.on('ready', () => outage.up());
  // The reconnect strategy never gives up, so this settles only once connected or
  // when close() destroys the client; failures are reported through 'error' above.
  client.connect().catch(() => undefined);

  const redis: Redis = {
    get isReady() {
      return client.isReady;
    },
    whenReady: () => new Promise<void>((resolve) => (client.isReady ? resolve() : client.once('ready', () => resolve()))),
    tag: () => '',
    slotOf: () => 0,
    eval: (script, options) => client.eval(script, options),
    evalSha: (sha, options) => client.evalSha(sha, options),
    sMembers: (key) => client.sMembers(key),
    hGetAll: (key) => client.hGetAll(key),
    publish: (channel, message) => client.publish(channel, message),
    ping: () => client.ping(),
    subscriber: (name) => client.duplicate(name ? { name } : {}),
  };

  let closing: Promise<void> | undefined;
  return {
    client: redis,
    url,
    close() {
      closing ??= (async () => {
        if (!client.isOpen) return;
        if (!client.isReady) {
          client.destroy();
          return;
        }
        await closeWithin(deps.commandTimeoutMs, () => client.close(), () => {
          if (client.isOpen) client.destroy();
        });
      })();
      return closing;
    },
  };
}

/** node-redis's own slot-map refresh (not public API; see the file comment). */
interface SlotMapRefresh {
  _slots?: { rediscover?(startWith: { options?: unknown }): Promise<void> };
}

function connectCluster(deps: RedisConnectionDeps, nodes: readonly HostPort[]): RedisConnection {
  const { log } = deps;
  const maxDelayMs = deps.maxReconnectDelayMs ?? 5_000;
  const seeds = formatHostPorts(nodes);
  const url = `redis cluster ${seeds}`;
  // Credentials and TLS of REDIS_URL apply to every node.
  let credentials: { username?: string; password?: string; tls: boolean } = { tls: false };
  try {
    const u = new URL(deps.url);
    credentials = { ...(u.username ? { username: decodeURIComponent(u.username) } : {}), ...(u.password ? { password: decodeURIComponent(u.password) } : {}), tls: u.protocol === 'rediss:' };
  } catch {
    // REDIS_URL is validated by the config; nothing to take from it otherwise
  }
  const { tls, ...auth } = credentials;
  const socketDefaults = {
    connectTimeout: deps.commandTimeoutMs,
    reconnectStrategy: (retries: number) => backoffMs(retries, 100, maxDelayMs),
    ...(tls ? { tls: true as const } : {}),
  };
  const cluster: RedisClusterClient = createCluster({
    rootNodes: nodes.map((n) => ({ socket: { host: n.host, port: n.port } })),
    defaults: { ...auth, disableOfflineQueue: true, socket: socketDefaults },
    commandOptions: { timeout: deps.commandTimeoutMs },
  });

  const clusterOutage = outageLog(log, url, 'REDIS_CLUSTER_NODES');
  const nodeOutages = new Map<string, ReturnType<typeof outageLog>>();
  const nodeOutage = (info: { host?: string; port?: number }) => {
    const address = `${info.host}:${info.port}`;
    let o = nodeOutages.get(address);
    if (!o) {
      o = outageLog(log, `redis cluster node ${address}`, 'REDIS_URL');
      nodeOutages.set(address, o);
    }
    return o;
  };

  let isOpen = false;
  let isClosed = false;
  let refreshTimer: NodeJS.Timeout | undefined;
  let soonTimer: NodeJS.Timeout | undefined;
  let hasWarnedRefresh = false;
  const readyWaiters: (() => void)[] = [];

  /** Asks a live node (else a seed) for the slot map again. */
  function refreshSlots(): void {
    if (!isOpen || isClosed) return;
    const slots = (cluster as unknown as SlotMapRefresh)._slots;
    if (typeof slots?.rediscover !== 'function') {
      if (!hasWarnedRefresh) log.warn('this node-redis cannot be asked to refresh the cluster slot map; after a failover, slots of a dead master stay unreachable until a node answers MOVED');
      hasWarnedRefresh = true;
      return;
    }
    const live = cluster.masters.find((m) => m.client?.isReady)?.client;
    const seed = nodes[Math.floor(Math.random() * nodes.length)] as HostPort;
    slots
      .rediscover(live ?? { options: { ...auth, socket: { ...socketDefaults, host: seed.host, port: seed.port } } })
      .catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'redis cluster: slot map refresh failed'))
      // A master still unreachable: asked again soon, until a replica took its slots over (its
      // own reconnection attempts, which say so, back off to seconds apart).
      .then(() => {
        if (cluster.masters.some((m) => m.client?.isReady !== true)) refreshSoon();
      });
  }
  function refreshSoon(): void {
    soonTimer ??= setTimeout(() => {
      soonTimer = undefined;
      refreshSlots();
    }, FAILED_NODE_REFRESH_MS);
    soonTimer.unref();
  }

  cluster.on('error', (err: unknown) => log.debug({ err: errorMessage(err) }, 'redis cluster: topology discovery failed'));
  cluster.on('node-error', (err: unknown, info: { host?: string; port?: number }) => {
    nodeOutage(info).down(err);
    refreshSoon();
  });
  cluster.on('node-ready', (info: { host?: string; port?: number }) => {
    const o = nodeOutages.get(`${info.host}:${info.port}`);
    if (o?.isDown) o.up();
  });

  // createCluster's connect() tries the seeds once: retried here until it works or close().
  void (async () => {
    for (let attempt = 0; !isClosed; attempt++) {
      try {
        await cluster.connect();
        if (isClosed) {
          cluster.destroy();
          return;
        }
        isOpen = true;
        clusterOutage.up();
        refreshTimer = setInterval(refreshSlots, TOPOLOGY_REFRESH_MS);
        refreshTimer.unref();
        for (const resolve of readyWaiters.splice(0)) resolve();
        return;
      } catch (err) {
        if (isClosed) return;
        clusterOutage.down(err);
        await new Promise((r) => setTimeout(r, backoffMs(attempt, 100, maxDelayMs)));
      }
    }
  })();

  const isReady = () => isOpen && !isClosed && cluster.masters.some((m) => m.client?.isReady === true);
  // Before the first slot map (or after close) node-redis has no node to send to: fail like an offline client.
  const whenOpen = <T>(command: () => Promise<T>): Promise<T> => (isOpen && !isClosed ? command() : Promise.reject(new ClientOfflineError()));

  const redis: Redis = {
    get isReady() {
      return isReady();
    },
    whenReady: () => new Promise<void>((resolve) => (isOpen ? resolve() : readyWaiters.push(resolve))),
    tag: (group) => `{${group}}`,
    slotOf: (key) => calculateSlot(key),
    eval: (script, options) => whenOpen(() => cluster.eval(script, options)),
    evalSha: (sha, options) => whenOpen(() => cluster.evalSha(sha, options)),
    sMembers: (key) => whenOpen(() => cluster.sMembers(key)),
    hGetAll: (key) => whenOpen(() => cluster.hGetAll(key)),
    publish: (channel, message) => whenOpen(() => cluster.publish(channel, message)),
    ping: () => whenOpen(() => cluster.sendCommand(undefined, true, ['PING'])),
    subscriber(name) {
      const known = cluster.masters.filter((m) => m.client?.isReady);
      const node = known[Math.floor(Math.random() * known.length)] ?? cluster.masters[0];
      const seed = node ? { host: node.host, port: node.port } : (nodes[Math.floor(Math.random() * nodes.length)] as HostPort);
      return createClient({
        ...auth,
        ...(name ? { name } : {}),
        disableOfflineQueue: true,
        socket: {
          ...socketDefaults,
          host: seed.host,
          port: seed.port,
          reconnectStrategy: (retries: number) => (retries >= SUBSCRIBER_NODE_ATTEMPTS ? new Error(`redis cluster node ${seed.host}:${seed.port} unreachable; moving to another node`) : backoffMs(retries, 100, maxDelayMs)),
        },
      });
    },
  };

  let closing: Promise<void> | undefined;
  return {
    client: redis,
    url,
    close() {
      closing ??= (async () => {
        isClosed = true;
        clearInterval(refreshTimer);
        clearTimeout(soonTimer);
        for (const resolve of readyWaiters.splice(0)) resolve();
        if (!isOpen) {
          cluster.destroy();
          return;
        }
        await closeWithin(deps.commandTimeoutMs, () => cluster.close(), () => cluster.destroy());
      })();
      return closing;
    },
  };
}
