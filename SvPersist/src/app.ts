/** Builds a whole SvPersist in-process (tests listen on port 0); main.ts only adds the process edge. */
import type { Server } from 'node:http';
import { QueryTypes, Sequelize } from 'sequelize';
import { listen, boundPort, closeServer, topology, brokerUrls, createLifecycle, createMetrics, createIdFactory, withDeadline, type HealthReport, type Logger, type Metrics, type Readiness } from '@simplechat/shared';
import type { PersistConfig } from './config';
import { createStore, storageWhere, type Store } from './store';
import { createStorageCheck } from './storage-check';
import { createRooms, type Rooms } from './rooms';
import type { Writer } from './writer';
import { createPartitionWriters, storedUntil, type PartitionWriters } from './writers';
import { createLegacyDrain } from './legacy-queue';
import { createEmptyPositions } from './empty-positions';
import { createHttpApp } from './http';
import { createConversations } from './conversations';
import { createPersistMetrics, createNotifyMetrics, createReplicaMetrics } from './metrics';
import { createReadReplica } from './read-replica';
import { createIdlePartitions } from './idle-partitions';
import { createMissedNotifier, OUTBOX_DEPTH_SQL } from './missed';
import { createWebhookSender } from './webhook';
import { notifyTopology, type RetrySchedule } from './notify-topology';
import { createQueueMonitor } from './queue-monitor';
import { createPartitionBalance } from './partition-balance';
import { createStorageProgress } from './storage-progress';

/** A dead or unreachable Postgres must turn into a quick 503, not a hanging request. */
const DB_CONNECT_TIMEOUT_MS = 3000;
const DB_ACQUIRE_TIMEOUT_MS = 5000;
const DB_STATEMENT_TIMEOUT_MS = 10_000;
/** client-side bound for a server that stopped answering mid-query */
const DB_QUERY_TIMEOUT_MS = 15_000;
const HEALTH_TIMEOUT_MS = 2000;
const CLOSE_GRACE_MS = 1000;
/** how long a receipt may take from its acceptance to the queue (a gateway's publish batch and confirm, a clock running ahead) */
const RECEIPTS_IN_FLIGHT_MS = 1000;

export type PersistServiceConfig = Pick<
  PersistConfig,
  'databaseUrl' | 'databaseReadUrl' | 'amqpUrl' | 'queuePrefix' | 'prefetch' | 'maxBatchRows' | 'maxBatchDelayMs' | 'dbPoolMax' | 'maxRoomMembers' | 'maxRoomsPerUser' | 'emptyAfterMs' | 'internalToken' | 'internalTokenPrevious'
  | 'notifyWebhookUrl' | 'notifyWebhookSecret' | 'notifyAfterMs' | 'notifyIncludeBody'
> &
  Partial<Pick<PersistConfig, 'amqpUrls' | 'queuePartitions' | 'queueType'>>;

export interface PersistServiceDeps {
  config: PersistServiceConfig;
  log: Logger;
  /** main.ts passes one with process metrics; otherwise a fresh registry */
  metrics?: Metrics;
  /** tests only: a shorter backoff than the contract's (its delay queues are named after it) */
  notifyRetrySchedule?: RetrySchedule;
  /** the broker's queues differ from the settings (QUEUE_TYPE, QUEUE_PARTITIONS): main.ts exits */
  onFatal?(err: Error): void;
}

/** PROTOCOL.md's report, and why Postgres counts as down (no database, not migrated, no answer). */
export interface PersistHealthReport extends HealthReport {
  reason?: string;
}

export interface PersistService {
  readonly store: Store;
  readonly rooms: Rooms;
  /** the partitions' writers as one */
  readonly writer: PartitionWriters;
  readonly metrics: Metrics;
  /** Starts the HTTP server; resolves with the bound port. */
  listen(port: number, host: string): Promise<number>;
  health(): Promise<PersistHealthReport>;
  close(): Promise<void>;
}

/** A replica that does not answer is passed over quickly: reads then go to the primary. */
const REPLICA_CONNECT_TIMEOUT_MS = 1000;
const REPLICA_QUERY_TIMEOUT_MS = 3000;

/** Sequelize's Postgres dialect listens for 'error' on every pooled client and evicts it. */
export function createSequelize(databaseUrl: string, poolMax: number, timeouts: { connectTimeoutMs?: number; queryTimeoutMs?: number } = {}): Sequelize {
  return new Sequelize(databaseUrl, {
    dialect: 'postgres',
    logging: false,
    pool: { max: poolMax, min: 0, acquire: DB_ACQUIRE_TIMEOUT_MS, idle: 10_000, evict: 1000 },
    dialectOptions: {
      application_name: 'SvPersist',
      connectionTimeoutMillis: timeouts.connectTimeoutMs ?? DB_CONNECT_TIMEOUT_MS,
      statement_timeout: Math.min(DB_STATEMENT_TIMEOUT_MS, timeouts.queryTimeoutMs ?? DB_STATEMENT_TIMEOUT_MS),
      query_timeout: timeouts.queryTimeoutMs ?? DB_QUERY_TIMEOUT_MS,
      keepAlive: true,
    },
  });
}

export function createPersistService(deps: PersistServiceDeps): PersistService {
  const { config, log } = deps;
  const internalTokens = [config.internalToken, ...(config.internalTokenPrevious ? [config.internalTokenPrevious] : [])];
  // Closed in reverse: stop answering, stop consuming (flush or leave unacked), then the pool.
  const lifecycle = createLifecycle(log);
  const sequelize = createSequelize(config.databaseUrl, config.dbPoolMax);
  lifecycle.add('Postgres pool', () => sequelize.close());
  const metrics = deps.metrics ?? createMetrics({ service: 'SvPersist' });
  // History and sync may read a streaming replica; the replica's failures are its own (the storage check is the primary's).
  // Series exist without a replica too (zeros).
  const replicaMetrics = createReplicaMetrics(metrics);
  let reads;
  if (config.databaseReadUrl) {
    const replica = createSequelize(config.databaseReadUrl, config.dbPoolMax, { connectTimeoutMs: REPLICA_CONNECT_TIMEOUT_MS, queryTimeoutMs: REPLICA_QUERY_TIMEOUT_MS });
    lifecycle.add('Postgres replica pool', () => replica.close());
    reads = createReadReplica({ primary: sequelize, replica, log, metrics: replicaMetrics, onFailure: () => storage.suspect() });
  }
  // A failed query makes the storage check (created just below) look again soon.
  const store = createStore({ sequelize, ...(reads ? { reads } : {}), onFailure: () => storage.suspect() });
  const nextRoomId = createIdFactory();
  const rooms = createRooms({
    sequelize,
    newRoomId: () => `r_${nextRoomId(Date.now())}`,
    limits: { maxRoomMembers: config.maxRoomMembers, maxRoomsPerUser: config.maxRoomsPerUser },
    onFailure: () => storage.suspect(),
  });
  const conversations = createConversations({ sequelize, onFailure: () => storage.suspect() });
  const where = storageWhere(sequelize);
  const storage = createStorageCheck({ store, target: `${where.hostPort}/${where.database}`, log, timeoutMs: HEALTH_TIMEOUT_MS });
  lifecycle.add('storage check', () => storage.close());
  const amqpUrls = brokerUrls(config);
  const queues = topology(config.queuePrefix, { partitions: config.queuePartitions ?? 1, queueType: config.queueType ?? 'quorum' });
  let fatal: Error | undefined;
  const onFatal = (err: Error) => {
    if (fatal) return;
    fatal = err;
    deps.onFatal?.(err);
  };
  const queueMonitor = createQueueMonitor({ amqpUrl: amqpUrls, topology: queues, timeoutMs: HEALTH_TIMEOUT_MS, log });
  lifecycle.add('queue monitor', () => queueMonitor.close());
  // Read at scrape time; the writer is created just below.
  const writerMetrics = createPersistMetrics(metrics, {
    stats: () => writer.stats(),
    queueDepth: () => queueMonitor.depth(),
    dependencies: async () => ({ postgres: (await storage.check()).isReady, rabbitmq: writer.isConnected() }),
  });
  const writerDeps = {
    amqpUrl: amqpUrls,
    topology: queues,
    prefetch: config.prefetch,
    maxBatchRows: config.maxBatchRows,
    maxBatchDelayMs: config.maxBatchDelayMs,
    store,
    log,
    metrics: writerMetrics,
    onFatal,
  };
  // Every instance reports how far its writers stored (storage-progress.ts); closed after the
  // writers, so that what they stored while closing counts.
  const progress = createStorageProgress({ sequelize, local: localStoredUntil, log, onFailure: () => storage.suspect() });
  lifecycle.add('storage progress', () => progress.close());
  const writer = createPartitionWriters(writerDeps);
  lifecycle.add('writer', () => writer.close());
  const balance = createPartitionBalance({ amqpUrl: amqpUrls, membersQueue: queues.membersQueue, queueType: queues.queueType, partitions: writer.partitions, log, metrics });
  lifecycle.add('partition balance', () => balance.close());
  const legacy = createLegacyDrain({ writer: writerDeps, monitor: queueMonitor, log });
  lifecycle.add('classic queue drain', () => legacy.close());
  const emptyPositions = createEmptyPositions({ sequelize, emptyAfterMs: config.emptyAfterMs, intervalMs: Math.min(5000, Math.max(100, Math.floor(config.emptyAfterMs / 4))), log });
  lifecycle.add('empty positions', () => emptyPositions.close());
  const idlePartitions = createIdlePartitions({ sequelize, log });
  lifecycle.add('idle partitions', () => idlePartitions.close());

  // Notifications of missed messages run here, not in a service of their own: they read the
  // messages, marks, rooms and mutes this service owns, in its database, and need no other
  // process to deploy or to keep alive. Series exist with notifications off too (zeros).
  const webhookSecret = config.notifyWebhookUrl ? config.notifyWebhookSecret : undefined;
  const notifyMetrics = createNotifyMetrics(metrics, {
    outboxDepth: async () => {
      if (!webhookSecret) return undefined;
      const asked = sequelize.query<{ n: number }>(OUTBOX_DEPTH_SQL, { type: QueryTypes.SELECT }).then(([row]) => row?.n);
      return withDeadline(asked, HEALTH_TIMEOUT_MS, undefined);
    },
  });
  if (webhookSecret) {
    const notify = notifyTopology(config.queuePrefix, deps.notifyRetrySchedule, queues.queueType);
    const webhook = createWebhookSender({ amqpUrl: amqpUrls, topology: notify, onFatal, url: config.notifyWebhookUrl, secret: webhookSecret, log, metrics: notifyMetrics });
    lifecycle.add('notification webhook', () => webhook.close());
    const missed = createMissedNotifier({
      sequelize,
      amqpUrl: amqpUrls,
      topology: notify,
      onFatal,
      afterMs: config.notifyAfterMs,
      includeBody: config.notifyIncludeBody,
      // Storage as every instance sees it, less a moment: a gateway's publish, its clock running ahead.
      receiptsStoredUntil: async () => (await progress.storedUntil()) - RECEIPTS_IN_FLIGHT_MS,
      log,
      metrics: notifyMetrics,
      onFailure: () => storage.suspect(),
    });
    lifecycle.add('missed-message notifier', () => missed.close());
  }

  // Per partition: nothing waiting in this instance's writer and nothing ready in its queue means
  // everything accepted until the queues were asked is stored; otherwise it is as far as what the
  // writer stored last. Storage is as far as its slowest partition.
  async function localStoredUntil(): Promise<number> {
    const asked = Date.now();
    const [depth, draining] = await Promise.all([queueMonitor.depth(), legacy.progress()]);
    const partitions = writer.partitions.map((w, p) => ({ progress: w.progress(), ready: depth?.partitions[p] }));
    return storedUntil(draining ? [...partitions, draining] : partitions, asked);
  }

  // Postgres is up when SvPersist can use it: it answers, and the database exists and is migrated.
  async function health(): Promise<PersistHealthReport> {
    const postgres = await storage.check();
    const rabbitmq = writer.isConnected() ? ('up' as const) : ('down' as const);
    return {
      status: postgres.isReady && rabbitmq === 'up' ? 'ok' : 'down',
      service: 'SvPersist',
      dependencies: { postgres: postgres.isReady ? 'up' : 'down', rabbitmq },
      ...(postgres.reason ? { reason: postgres.reason } : {}),
    };
  }

  let server: Server | undefined;
  // Ready for read traffic: Postgres answers and is migrated. The broker is not needed to serve history and sync.
  async function ready(): Promise<Readiness> {
    if (lifecycle.isClosing) return { ready: false, reason: 'shutting down' };
    const { isReady: postgres, reason } = await storage.check();
    return postgres ? { ready: true, checks: { postgres } } : { ready: false, reason: reason ?? 'Postgres is not ready', checks: { postgres } };
  }
  const app = createHttpApp({ store, rooms, conversations, internalTokens, health, ready, metrics, log: log.child({ component: 'http' }) });

  return {
    store,
    rooms,
    writer,
    metrics,
    health,
    async listen(port, host) {
      if (lifecycle.isClosing) throw new Error('SvPersist is closed');
      if (server) return boundPort(server);
      const started = await listen(app, port, host);
      server = started;
      lifecycle.add('HTTP server', () => closeServer(started, CLOSE_GRACE_MS));
      return boundPort(started);
    },
    close: () => lifecycle.close(),
  };
}
