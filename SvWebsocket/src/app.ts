/** Builds a whole SvWebsocket instance in-process (tests use port 0); main.ts only adds the process edge. */
import type { Server } from 'node:http';
import { resolve } from 'node:path';
import express from 'express';
import {
  createApp,
  createJsonClient,
  createIdFactory,
  internalAuth,
  errorHandler,
  parseOr400,
  listen,
  boundPort,
  closeServer,
  deliverRequest,
  isInternalPath,
  topology,
  brokerUrls,
  isUserId,
  USER_ID_RULE,
  createRedisConnection,
  createLifecycle,
  errorMessage,
  sleep,
  createMetrics,
  httpMetrics,
  mountOperationalRoutes,
  type HealthReport,
  type Logger,
  type Metrics,
} from '@simplechat/shared';
import type { WsConfig } from './config';
import { createAuth } from './auth';
import { createConnectionRegistry } from './connections';
import { createDiscovery } from './discovery';
import { createGateway } from './gateway';
import { createIdempotency } from './idempotency';
import { createOriginCheck, DEVELOPMENT_ORIGINS } from './origin';
import { createPersistClient } from './persist-client';
import { createPublisher } from './publisher';
import { createRouter } from './router';
import { createMembership } from './membership';
import { createRooms } from './rooms';
import { createServerApi, SERVER_API_BASE_PATH } from './server-api';
import { createServerApiDomain } from './server-api-domain';
import { createPacer } from './pacer';
import { createPeerLinkServer } from './peer-link';
import { createWsMetrics } from './metrics';
import { createPresence } from './presence';
import { createTypingGate } from './typing';
import { createRoomRateLimiter } from './room-rate';
import { createReceipts } from './receipts';
import { createRoomMarks } from './room-marks';

export interface WebsocketService {
  readonly port: number;
  readonly url: string;
  readonly instanceId: string;
  stats(): { connections: number; sockets: number };
  /** this instance's Prometheus registry (GET /metrics renders it) */
  readonly metrics: Metrics;
  close(): Promise<void>;
}

export interface WebsocketServiceOptions {
  /** main.ts passes one with process metrics; tests get a fresh one each */
  metrics?: Metrics;
  /** the broker's queues differ from the settings (QUEUE_TYPE, QUEUE_PARTITIONS) after start: main.ts exits */
  onFatal?(err: Error): void;
}

const DEV_TOKEN_TTL_S = 24 * 3600;
const STARTUP_BROKER_WAIT_MS = 3000;
/** presence changes reach watchers batched at most this often */
const PRESENCE_FLUSH_MS = 250;

export async function createWebsocketService(config: WsConfig, log: Logger, options: WebsocketServiceOptions = {}): Promise<WebsocketService> {
  const internalTokens = [config.internalToken, ...(config.internalTokenPrevious ? [config.internalTokenPrevious] : [])];
  // Idempotency keys; commands fail at once while Redis is away (sends answer unavailable).
  const redisConn = createRedisConnection({ url: config.redisUrl, clusterNodes: config.redisClusterNodes, log: log.child({ component: 'redis' }), commandTimeoutMs: config.requestTimeoutMs });
  const redis = redisConn.client;
  const isRedisUp = () => redis.isReady;

  const discoverJson = createJsonClient({ baseUrl: config.discoverUrl, token: config.internalToken, timeoutMs: config.requestTimeoutMs, name: 'SvDiscover' });
  const persistJson = createJsonClient({ baseUrl: config.persistUrl, token: config.internalToken, timeoutMs: config.requestTimeoutMs, name: 'SvPersist' });
  const persist = createPersistClient(persistJson);
  const metricsRegistry = options.metrics ?? createMetrics({ service: 'SvWebsocket', instanceId: config.instanceId });
  // Read at scrape time only; the components they name are created below.
  const metrics = createWsMetrics(metricsRegistry, {
    connections: () => gateway.stats(),
    users: () => registry.users().length,
    dependencies: () => ({ rabbitmq: publisher.isReady(), redis: isRedisUp(), discover: discovery.isUp() }),
  });
  let isDraining = false;
  const pacer = createPacer(config.flushIntervalMs);
  const publishPacer = createPacer(config.publishIntervalMs);
  let fatal: Error | undefined;
  const publisher = createPublisher({
    url: brokerUrls(config),
    topology: topology(config.queuePrefix, { partitions: config.queuePartitions, queueType: config.queueType }),
    channels: config.publishChannels,
    timeoutMs: config.publishTimeoutMs,
    log,
    metrics,
    pacer: publishPacer,
    onFatal(err) {
      fatal = err;
      options.onFatal?.(err);
    },
  });
  const idempotency = createIdempotency({ redis, keyPrefix: config.keyPrefix, windowMs: config.idempotencyWindowMs, emptyAfterMs: config.emptyAfterMs, lookupStored: (s, c) => persist.byClient(s, c), reserveBlocks: (blocks) => persist.reserveBlocks(blocks), log, pacer });
  const registry = createConnectionRegistry();
  const auth = createAuth({
    secrets: [config.jwtSecret, config.jwtSecretPrevious].filter((s): s is string => !!s),
    publicKeyPem: config.jwtPublicKey,
    jwksUrl: config.jwtJwksUrl,
    publicAlgorithms: config.jwtAlgorithms,
    issuer: config.jwtIssuer,
    audience: config.jwtAudience,
    clockToleranceSec: config.jwtClockSkewSec,
  });
  const origins = config.environment === 'development' ? [...DEVELOPMENT_ORIGINS, ...config.allowedOrigins] : config.allowedOrigins;
  if (origins.length === 0) log.info('ALLOWED_ORIGINS is empty: browser pages of other origins are refused (403); set it to your web app origins to let them connect');

  // The server API reads its own bodies (64 KiB at most): it goes before the app's body parser; its routes are added once the rooms exist.
  const serverApi = express.Router();
  const app = createApp({ bodyLimit: '8mb', before: [httpMetrics(metricsRegistry), internalAuth(internalTokens, log, () => metricsRegistry.internalAuthRefused.inc()), serverApi] });
  let server: Server | undefined;
  let publicUrl = config.publicUrl ?? '';

  const membership = createMembership({
    fetch: (room) => persist.rooms.get(room),
    redis,
    keyPrefix: config.keyPrefix,
    instanceId: config.instanceId,
    isSubscribed: () => discovery.isSubscribed(),
    log,
  });
  const discovery = createDiscovery({
    client: discoverJson,
    instanceId: config.instanceId,
    get url() {
      return publicUrl;
    },
    heartbeatMs: config.heartbeatMs,
    cacheMs: config.discoveryCacheMs,
    subscribedCacheMs: config.discoveryCacheSubscribedMs,
    // SvDiscover publishes its changes on the Redis it shares with the gateways (same KEY_PREFIX).
    changes: { redis, keyPrefix: config.keyPrefix },
    localUsers: () => registry.users(),
    hasLocal: (u) => registry.has(u),
    log,
    metrics,
  });
  const router = createRouter({ registry, discovery, instanceId: config.instanceId, internalToken: config.internalToken, forwardTimeoutMs: config.forwardTimeoutMs, log, metrics, pacer });
  // Frames from peers' routers (the receiving end of the peer link); /internal/* upgrades go here.
  const roomMarks = createRoomMarks(registry);
  // Room marks from peers are coalesced here before they reach connections (room-marks.ts).
  const inbound = { deliver: (users: readonly string[], frame: string) => (roomMarks.inbound(users, frame) ? 0 : registry.deliver(users, frame)) };
  const peerLinks = createPeerLinkServer({ tokens: internalTokens, registry: inbound, log, metrics, onRefused: () => metricsRegistry.internalAuthRefused.inc() });
  const rooms = createRooms({ store: persist.rooms, membership, router, currentPosition: (c) => idempotency.currentPosition(c) });
  const nextId = createIdFactory();
  serverApi.use(
    SERVER_API_BASE_PATH,
    createServerApi({
      keys: config.serverApiKeys,
      domain: createServerApiDomain({ rooms, accept: { idempotency, publisher, router, rooms, nextId } }),
      maxBodyChars: config.maxBodyChars,
      log: log.child({ component: 'server-api' }),
      metrics: metricsRegistry,
    }),
  );
  const presence = createPresence({
    fetch: (users) => discovery.presence(users),
    ...(config.presenceWatch === 'shared' ? { sharedWith: (user: string, others: readonly string[]) => persist.sharedWith(user, others) } : {}),
    reconcileMs: config.presenceReconcileMs,
    flushMs: PRESENCE_FLUSH_MS,
    log,
    metrics,
  });
  const typing = createTypingGate();
  const receipts = createReceipts({ redis, keyPrefix: config.keyPrefix, rooms, router, roomMarks, publisher, persist, pacer });
  const roomRate = createRoomRateLimiter({ redis, keyPrefix: config.keyPrefix, ratePerSec: config.roomRateLimitPerSec });
  const gateway = createGateway({
    limits: config,
    isOriginAllowed: createOriginCheck(origins),
    auth,
    registry,
    router,
    discovery,
    publisher,
    idempotency,
    persist,
    rooms,
    presence,
    typing,
    receipts,
    roomRate,
    nextId,
    log,
    metrics,
  });
  // What discovery learns reaches the gateway and the room cache as events.
  discovery.on('claimsRestored', () => {
    membership.reset(); // room changes may have been missed while this instance was away
    gateway.hint();
  });
  discovery.on('hints', (users) => gateway.hint(users));
  discovery.on('roomChanged', (room, version) => membership.changed(room, version));
  discovery.on('changesReset', () => {
    membership.reset();
    presence.changedAll();
  });
  discovery.on('usersChanged', (users) => presence.changed(users));
  discovery.on('instanceChanged', () => presence.changedAll());

  app.get('/health', async (_req, res) => {
    const persistUp = await persist.cursor().then(
      () => true,
      () => false,
    );
    const dependencies: HealthReport['dependencies'] = {
      rabbitmq: publisher.isReady() ? 'up' : 'down',
      redis: isRedisUp() ? 'up' : 'down',
      discover: discovery.isUp() ? 'up' : 'down',
      persist: persistUp ? 'up' : 'down',
    };
    const core = publisher.isReady() && isRedisUp();
    const status: HealthReport['status'] = !core ? 'down' : Object.values(dependencies).every((d) => d === 'up') ? 'ok' : 'degraded';
    res.status(core ? 200 : 503).json({ status, service: 'SvWebsocket', instanceId: config.instanceId, dependencies, ...gateway.stats() });
  });
  // Ready: the broker is there (nothing can be acked without it) and this instance is not draining.
  mountOperationalRoutes(app, {
    service: 'SvWebsocket',
    instanceId: config.instanceId,
    metrics: metricsRegistry,
    ready: () => {
      const checks = { rabbitmq: publisher.isReady(), draining: isDraining };
      if (isDraining) return { ready: false, reason: 'shutting down: draining connections', checks };
      if (!checks.rabbitmq) return { ready: false, reason: 'not connected to RabbitMQ', checks };
      return { ready: true, checks };
    },
  });
  app.get('/', (_req, res) => res.redirect('/client/'));
  const staticOptions = { index: 'index.html', redirect: true, maxAge: 0 };
  // GET /client itself answers with the page (PROTOCOL.md), not a redirect to /client/.
  const clientPage = resolve(__dirname, '..', 'public', 'index.html');
  app.get('/client', (_req, res) => res.sendFile(clientPage, { maxAge: 0 }));
  // The page's modules import the client package's ESM build (with its wire.js) as ./esm/*.js: no bundler.
  app.use('/client/esm', express.static(resolve(__dirname, '..', '..', 'client', 'dist', 'esm'), staticOptions));
  app.use('/client', express.static(resolve(__dirname, '..', 'public'), staticOptions), express.static(resolve(__dirname, '..', 'dist', 'public'), staticOptions));
  if (config.environment === 'development' && auth.canSign) {
    app.post('/dev/token', async (req, res) => {
      const userId = (req.body as { userId?: unknown } | undefined)?.userId;
      if (!isUserId(userId)) {
        res.status(400).json({ error: `userId must be a user id (${USER_ID_RULE})` });
        return;
      }
      res.json({ token: await auth.sign(userId, DEV_TOKEN_TTL_S) });
    });
  }
  app.post('/internal/deliver', (req, res) => {
    const body = parseOr400(deliverRequest, req.body, res);
    if (!body) return;
    let delivered = 0;
    for (const item of body.items) delivered += registry.deliver(item.users, item.frame);
    res.json({ delivered });
  });
  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use(errorHandler(log));

  // The idempotency store's epoch is kept on the heartbeat cadence.
  const epochCheck = async () => {
    if (!isRedisUp()) return;
    await idempotency
      .ensureEpoch(async () => (await persist.cursor()).newestTs)
      .catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'epoch check failed'));
  };

  // Serve only once the broker and Redis are there (or say why not): without them nothing can
  // be acked. The epoch is recorded first, so early sends do not all take the storage check.
  const brokerWait = setTimeout(() => log.warn({ amqp: brokerUrls(config).map((u) => new URL(u).host).join(','), redis: redisConn.url }, 'still waiting for RabbitMQ or Redis; starting anyway, sends answer unavailable until both are back'), STARTUP_BROKER_WAIT_MS);
  await Promise.race([Promise.all([publisher.ready().catch(() => undefined), redis.whenReady()]), sleep(STARTUP_BROKER_WAIT_MS)]);
  clearTimeout(brokerWait);
  if (fatal) {
    await publisher.close().catch(() => undefined);
    await redisConn.close().catch(() => undefined);
    await Promise.all([discoverJson.close(), persistJson.close()]).catch(() => undefined);
    throw fatal;
  }
  await epochCheck();
  server = await listen(app, config.port, config.host);
  server.on('upgrade', (req, socket, head) => {
    if (isInternalPath((req.url ?? '').split('?')[0] ?? '')) peerLinks.handleUpgrade(req, socket, head);
    else gateway.handleUpgrade(req, socket, head);
  });
  const port = boundPort(server);
  if (!publicUrl) publicUrl = `http://127.0.0.1:${port}`;
  const epochTimer = setInterval(() => void epochCheck(), config.heartbeatMs);
  epochTimer.unref();

  // Connection churn as one info line per interval (and none while nothing happens), never one per connection.
  // A line also goes out when the counts moved since the last one (a registration that finished after it).
  let lastStats = '0/0';
  const summaryTimer =
    config.statsLogIntervalMs > 0
      ? setInterval(() => {
          const s = metrics.takeSummary();
          const stats = gateway.stats();
          const key = `${stats.connections}/${stats.sockets}`;
          if (Object.values(s).some((n) => n > 0) || key !== lastStats) {
            lastStats = key;
            log.info({ ...stats, ...s, intervalMs: config.statsLogIntervalMs }, 'connections summary');
          }
        }, config.statsLogIntervalMs)
      : undefined;
  summaryTimer?.unref();
  await discovery.start();

  // Added bottom-up: close() drains first, then closes these from discovery back to Redis.
  const lifecycle = createLifecycle(log);
  lifecycle.add('Redis client', () => redisConn.close());
  lifecycle.add('HTTP clients', () => Promise.all([discoverJson.close(), persistJson.close()]));
  lifecycle.add('HTTP server', async () => {
    if (server) await closeServer(server);
  });
  // Peers' links delivered until now (frames they had sent still landed); they reconnect elsewhere.
  lifecycle.add('peer links', () => peerLinks.close());
  lifecycle.add('gateway', () => {
    presence.close();
    typing.close();
    roomMarks.close();
    gateway.close();
  });
  lifecycle.add('publisher', () => publisher.close());
  lifecycle.add('router', () => router.close());
  lifecycle.add('discovery', () => discovery.close());

  let closing: Promise<void> | undefined;
  return {
    port,
    url: publicUrl,
    instanceId: config.instanceId,
    stats: () => gateway.stats(),
    metrics: metricsRegistry,
    close() {
      closing ??= (async () => {
        const startedAt = performance.now();
        isDraining = true;
        clearInterval(epochTimer);
        if (summaryTimer) clearInterval(summaryTimer);
        const before = gateway.stats();
        log.info(before, 'draining: refusing new connections and frames, answering those in flight');
        // 1. refuse new upgrades and frames; answer what is in flight (acks wait for confirms)
        await gateway.drain(Math.max(1000, config.shutdownTimeoutMs / 2));
        // One more turn of the event loop: frames that had already reached this host get their answer ("shutting down") before the close.
        await new Promise((r) => setImmediate(r));
        // 2. tell clients to reconnect elsewhere
        gateway.closeAll(1001, 'server shutting down');
        // 3. drop this instance's claims at once, flush the rest; then the others down to Redis
        await lifecycle.close();
        log.info({ connectionsClosed: before.sockets, drainMs: Math.round(performance.now() - startedAt) }, 'drained');
      })();
      return closing;
    },
  };
}
