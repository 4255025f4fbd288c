/**
 * SvPersist's series. Counters the writer already keeps (WriterStats) are read
 * at scrape time; the writer itself reports only each stored batch; queue
 * depths come from the queue monitor, asked at scrape time.
 */
import { BATCH_BUCKETS, LATENCY_BUCKETS_S, LAG_BUCKETS_S, type Metrics, type Envelope } from '@simplechat/shared';
import type { WriterStats } from './writer';
import type { QueueDepth } from './queue-monitor';
import type { ReplicaMetrics } from './read-replica';

export interface WriterMetrics {
  /** a batch committed and acked: its messages and how long the insert took */
  batchStored(messages: readonly Envelope[], insertSeconds: number): void;
}

export interface PersistMetricsSources {
  stats(): WriterStats;
  /** ready messages in the queue and the dead-letter queue; undefined when the broker cannot be asked */
  queueDepth(): Promise<QueueDepth | undefined>;
  dependencies(): Promise<Record<string, boolean>>;
}

export function createPersistMetrics(metrics: Metrics, sources: PersistMetricsSources): WriterMetrics {
  metrics.dependencies(sources.dependencies);
  const fromStats = (key: keyof WriterStats, name: string, help: string) =>
    metrics.counter(name, help, [], function () {
      this.reset();
      this.inc(sources.stats()[key]);
    });
  fromStats('deliveries', 'queue_deliveries_total', 'Deliveries taken from the queue (each one AMQP message: a batch of chat messages from one SvWebsocket tick).');
  fromStats('batches', 'insert_batches_total', 'Batches committed to Postgres and acked.');
  fromStats('inserts', 'insert_transactions_total', 'Insert transactions (a batch with refused rows takes several while they are isolated).');
  fromStats('messages', 'stored_messages_total', 'Valid messages written, or found already stored (redeliveries).');
  fromStats('rowsInserted', 'inserted_rows_total', 'Rows actually inserted (duplicates excluded).');
  fromStats('deadLettered', 'dead_lettered_total', 'Items sent to the dead-letter queue: undecodable payloads, invalid messages, rows Postgres refused.');
  fromStats('retries', 'insert_retries_total', 'Insert attempts that failed for a reason other than the data (storage down); the batch stays unacked and is retried.');

  const batchRows = metrics.histogram('insert_batch_messages', 'Messages per committed batch.', BATCH_BUCKETS);
  const insertSeconds = metrics.histogram('insert_latency_seconds', 'Time of the insert transaction(s) of one batch.', LATENCY_BUCKETS_S);
  const storeLag = metrics.histogram('store_lag_seconds', 'Per batch: from the oldest message accepted by SvWebsocket (its ts) to its commit.', LAG_BUCKETS_S);
  let newestStoredTs = 0;
  metrics.gauge('last_stored_message_timestamp_seconds', 'ts of the newest message stored (Unix seconds); time() minus this is the age of the newest stored message.', [], function () {
    if (newestStoredTs > 0) this.set(newestStoredTs / 1000);
  });

  // Both gauges below come from one broker round trip per scrape.
  let depthAsked: { at: number; depth: Promise<QueueDepth | undefined> } | undefined;
  const depth = () => {
    const now = Date.now();
    if (!depthAsked || now - depthAsked.at > 1000) depthAsked = { at: now, depth: sources.queueDepth() };
    return depthAsked.depth;
  };
  metrics.gauge('queue_depth', 'Deliveries ready in a queue, not yet handed to a consumer (each a batch of messages).', ['queue'], async function () {
    this.reset();
    const d = await depth();
    if (!d) return;
    this.set({ queue: 'messages' }, d.messages);
    this.set({ queue: 'dead_letters' }, d.deadLetters);
  });
  metrics.gauge('consumer_lag_seconds', 'How far storage is behind: 0 while the queue is empty, else the age of the newest stored message.', [], async function () {
    this.reset();
    const d = await depth();
    if (!d) return;
    this.set(d.messages === 0 || newestStoredTs === 0 ? 0 : Math.max(0, (Date.now() - newestStoredTs) / 1000));
  });

  return {
    batchStored(messages, seconds) {
      if (messages.length === 0) return;
      let oldest = Infinity;
      let newest = 0;
      for (const m of messages) {
        if (m.ts < oldest) oldest = m.ts;
        if (m.ts > newest) newest = m.ts;
      }
      batchRows.observe(messages.length);
      insertSeconds.observe(seconds);
      storeLag.observe(Math.max(0, (Date.now() - oldest) / 1000));
      if (newest > newestStoredTs) newestStoredTs = newest;
    },
  };
}

/** Why an event went to the notify dead-letter queue: the receiver answered 410, or every retry failed. */
/** Reads that may lag (history, sync): served by the replica, or by the primary instead (DATABASE_READ_URL). */
export function createReplicaMetrics(metrics: Metrics): ReplicaMetrics {
  const served = metrics.counter('replica_reads_total', 'History and sync reads served by the read replica (DATABASE_READ_URL).');
  const fellBack = metrics.counter('replica_fallback_reads_total', 'History and sync reads the primary served instead of the replica: behind (it had not replayed the primary\'s WAL within 100 ms) or unavailable (it failed, or failed within the last 2 s).', ['reason']);
  for (const reason of ['behind', 'unavailable'] as const) fellBack.inc({ reason }, 0);
  return { served: () => served.inc(), fellBack: (reason) => fellBack.inc({ reason }) };
}

export const NOTIFY_DEAD_LETTER_REASONS = ['gone', 'exhausted'] as const;
export type NotifyDeadLetterReason = (typeof NOTIFY_DEAD_LETTER_REASONS)[number];

export interface NotifyMetrics {
  /** events written to the outbox */
  created(events: number): void;
  /** an attempt answered 2xx */
  sent(): void;
  /** an attempt failed and its event waits in a delay queue */
  retried(): void;
  deadLettered(reason: NotifyDeadLetterReason): void;
  /** a first attempt started: seconds since the miss (ack ts + NOTIFY_AFTER_MS of the event's earliest message) */
  firstAttempt(secondsSinceMiss: number): void;
}

/** From 250 ms to 10 min: the contract's bound is 5 s while the services are up. */
const NOTIFY_LATENCY_BUCKETS_S = [0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 30, 60, 600] as const;

/** Registered whether notifications are on or not, so that dashboards and alerts see zeros. */
export function createNotifyMetrics(metrics: Metrics, sources: { outboxDepth(): Promise<number | undefined> }): NotifyMetrics {
  const created = metrics.counter('notify_events_created_total', 'Notification events created: one recipient\'s missed messages (at most 100), written to the outbox.');
  const sent = metrics.counter('notify_events_sent_total', 'Notification events the webhook answered with 2xx (retries of one event count once, when they succeed).');
  const retried = metrics.counter('notify_retries_total', 'Webhook attempts that failed (not 2xx nor 410, or no answer in 10 s) and were scheduled again through a delay queue.');
  const dead = metrics.counter('notify_dead_lettered_total', 'Notification events moved to the notify dead-letter queue: gone (the receiver answered 410) or exhausted (retried for 24 h).', ['reason']);
  for (const reason of NOTIFY_DEAD_LETTER_REASONS) dead.inc({ reason }, 0);
  const latency = metrics.histogram('notify_first_attempt_latency_seconds', 'From the miss (ack ts + NOTIFY_AFTER_MS of the event\'s earliest message) to the first webhook attempt.', NOTIFY_LATENCY_BUCKETS_S);
  metrics.gauge('notify_outbox_events', 'Events decided and not yet handed to the broker (the notify_outbox table); stays near 0 while the broker is up.', [], async function () {
    this.reset();
    const depth = await sources.outboxDepth();
    if (depth !== undefined) this.set(depth);
  });
  return {
    created: (n) => created.inc(n),
    sent: () => sent.inc(),
    retried: () => retried.inc(),
    deadLettered: (reason) => dead.inc({ reason }),
    firstAttempt: (s) => latency.observe(Math.max(0, s)),
  };
}
