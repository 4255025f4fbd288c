/**
 * The writer's drain rate: with SvPersist stopped, a backlog is published to
 * the cluster's partition queues in SvWebsocket's payload format
 * ({v:2,messages:[...]}, batches of `perPayload` messages, each split by
 * partition as the gateways' publisher splits it), then SvPersist (every
 * instance of the cluster) is started and timed from its first stored row
 * until every row is committed.
 */
import amqp from 'amqplib';
import { Client } from 'pg';
import { encodePayload, topology, partitionRoutingKey } from '../../shared/src/amqp';
import { partitionOf } from '../../shared/src/partition';
import type { Envelope } from '../../shared/src/envelope';
import { conversationKey, directConversation } from '../../shared/src/conversation';
import type { Cluster } from './cluster';
import { withDeadline } from './raw';

export interface DrainOptions {
  amqpUrl: string;
  runId: string;
  messages: number;
  perPayload: number;
  bodyChars: number;
  timeoutMs: number;
  /** QUEUE_PARTITIONS of the cluster (default 1) */
  partitions?: number;
}

export interface DrainResult {
  messages: number;
  /** AMQP messages published (batches split by partition) */
  payloads: number;
  /** messages published to each partition's queue */
  perPartition: number[];
  publishPerSec: number;
  /** SvPersist spawn -> first row */
  startupMs: number;
  /** first row -> last row committed */
  drainSeconds: number;
  rowsPerSec: number;
  /** rows found stored at the end (must equal messages) */
  stored: number;
  queueLeft: number;
  /** performance.now() of the first row seen and of the last row committed */
  firstAt: number;
  doneAt: number;
}

/** `beforeStart` runs just before SvPersist is started again (to open a CPU window). */
export async function writerDrain(cluster: Cluster, opts: DrainOptions, beforeStart: () => void): Promise<DrainResult> {
  const db = new Client({ connectionString: cluster.databaseUrl, connectionTimeoutMillis: 5000, statement_timeout: 20_000 });
  db.on('error', () => undefined);
  await db.connect();
  const conn = await amqp.connect(opts.amqpUrl, { timeout: 5000 });
  conn.on('error', () => undefined);
  try {
    await cluster.stopPersist();
    const seqNow = async () => {
      const r = await db.query<{ last_value: string; is_called: boolean }>('SELECT last_value::text, is_called FROM messages_seq');
      const row = r.rows[0];
      return row ? BigInt(row.last_value) - (row.is_called ? 0n : 1n) : 0n;
    };
    const seqBase = await seqNow();

    const partitions = opts.partitions ?? 1;
    const t = topology(cluster.queuePrefix, { partitions });
    const depth = async () => {
      let n = 0;
      for (const q of t.queues) n += (await ch.checkQueue(q)).messageCount;
      return n;
    };
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => undefined);
    const ts = Date.now();
    const body = 'x'.repeat(opts.bodyChars);
    const batches = Math.ceil(opts.messages / opts.perPayload);
    let payloads = 0;
    const perPartition = new Array<number>(partitions).fill(0);
    const positions = new Map<string, number>();
    const p0 = performance.now();
    for (let p = 0; p < batches; p++) {
      const batch: Envelope[][] = Array.from({ length: partitions }, () => []);
      for (let i = p * opts.perPayload; i < Math.min(opts.messages, (p + 1) * opts.perPayload); i++) {
        const conversation = directConversation(`d${i % 1000}`, `d${(i * 7 + 1) % 1000}`);
        const key = conversationKey(conversation);
        const seq = (positions.get(key) ?? 0) + 1;
        positions.set(key, seq);
        (batch[partitionOf(conversation, partitions)] as Envelope[]).push({ msgId: `bk${opts.runId}${String(i).padStart(9, '0')}`, clientId: `k${i}`, from: `d${i % 1000}`, conversation, seq, body, ts: ts + (i % 1000) });
      }
      for (const [partition, part] of batch.entries()) {
        if (part.length === 0) continue;
        ch.publish(t.exchange, partitionRoutingKey(partition), encodePayload(part), { persistent: true, contentType: 'application/json' });
        payloads++;
        perPartition[partition] = (perPartition[partition] ?? 0) + part.length;
      }
      if (p % 50 === 49 || p === batches - 1) await withDeadline(ch.waitForConfirms(), 30_000, 'backlog confirms');
    }
    const publishSeconds = (performance.now() - p0) / 1000;
    const queued = await depth();
    if (queued < payloads) throw new Error(`backlog: the queues hold ${queued} payloads, expected ${payloads}`);

    const target = seqBase + BigInt(opts.messages);
    beforeStart();
    const spawnAt = performance.now();
    let firstAt = 0;
    let doneAt = 0;
    let stored = 0;
    let startFailed = false;
    const started = cluster.startPersist();
    started.catch(() => (startFailed = true));
    const deadline = spawnAt + opts.timeoutMs;
    while (performance.now() < deadline && !startFailed) {
      const seq = await seqNow();
      if (!firstAt && seq > seqBase) firstAt = performance.now();
      if (seq >= target) {
        // nextval runs before commit: the count of visible rows says they are in
        const r = await db.query<{ n: string }>('SELECT count(*)::text AS n FROM messages WHERE seq > $1', [seqBase.toString()]);
        stored = Number(r.rows[0]?.n ?? 0);
        if (stored >= opts.messages) {
          doneAt = performance.now();
          break;
        }
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    await started;
    if (!doneAt) throw new Error(`backlog: ${stored || Number((await seqNow()) - seqBase)} of ${opts.messages} rows stored within ${opts.timeoutMs} ms`);
    const left = await depth();
    const drainSeconds = (doneAt - firstAt) / 1000;
    return {
      messages: opts.messages,
      payloads,
      perPartition,
      publishPerSec: opts.messages / publishSeconds,
      startupMs: firstAt - spawnAt,
      drainSeconds,
      rowsPerSec: opts.messages / drainSeconds,
      stored,
      queueLeft: left,
      firstAt,
      doneAt,
    };
  } finally {
    await conn.close().catch(() => undefined);
    await db.end().catch(() => undefined);
  }
}
