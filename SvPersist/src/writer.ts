/**
 * Queue -> Postgres, one partition. Consumes the partition's queue with manual
 * acks (every SvPersist does; the queue's single-active-consumer setting makes
 * one of them active and the others stand by); each delivery
 * is a batch of messages from SvWebsocket. Valid messages from many deliveries
 * are gathered until maxBatchRows or maxBatchDelayMs after the first, written
 * in one transaction, and only then acked. Unstorable input goes to the
 * dead-letter queue (on a confirm channel) before its delivery is acked, so
 * nothing is dropped and nothing blocks the queue.
 *
 * Batches run one after another: the partition's lock serialises commits anyway,
 * and while one batch is written the next one fills up.
 *
 * The same writer drains the classic queue of before partitions ('legacy'):
 * each message is then stored under its conversation's partition.
 */
import type { Channel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import {
  assertTopology,
  createAmqpConnection,
  decodePayload,
  encodePayload,
  partitionOf,
  backoffMs,
  errorMessage,
  UnavailableError,
  type AmqpSession,
  type Logger,
  type Envelope,
  type Receipt,
  type Topology,
} from '@simplechat/shared';
import { isDataError, isUnavailableError, sqlState, type Store } from './store';
import type { WriterMetrics } from './metrics';

export interface WriterStats {
  /** deliveries received from the broker */
  deliveries: number;
  /** batches committed and acked */
  batches: number;
  /** insert transactions (a batch with poison rows takes several) */
  inserts: number;
  /** valid messages written or found already stored */
  messages: number;
  /** rows actually inserted (duplicates excluded) */
  rowsInserted: number;
  /** dead-lettered items: whole payloads, invalid items and rows Postgres refused */
  deadLettered: number;
  /** insert attempts that failed for a reason other than the data */
  retries: number;
}

export interface Writer {
  isConnected(): boolean;
  /** Resolves once consuming (rejects if closed first). */
  ready(): Promise<void>;
  stats(): WriterStats;
  /**
   * How far storage got: `storedThrough` is the latest acceptance time (ms, the gateways' clocks)
   * of anything stored, messages and receipts alike; `idle` is true when nothing received waits to
   * be stored. The queue is first in, first out, so with one consumer everything published before
   * what was stored last is stored too.
   */
  progress(): { idle: boolean; storedThrough: number };
  /** a delivery arrived at or after `since` (ms): the broker has this writer active on its queue */
  deliveredSince(since: number): boolean;
  /**
   * Cancels the consumer and attaches a new one, at the back of the queue's line of consumers,
   * so that one standing by becomes active (partition-balance.ts). What was delivered before is
   * still stored and acked on the same channel.
   */
  stepBack(): Promise<void>;
  close(): Promise<void>;
}

export interface WriterDeps {
  /** the broker's nodes (AMQP_URLS), or one URL */
  amqpUrl: string | readonly string[];
  topology: Topology;
  /** the partition whose queue this writer consumes (default 0); 'legacy': the classic queue of before partitions */
  partition?: number | 'legacy';
  /** the broker's queues differ from the settings (QUEUE_TYPE, QUEUE_PARTITIONS): the service stops */
  onFatal?(err: Error): void;
  /** unacked deliveries the broker may hand out */
  prefetch: number;
  maxBatchRows: number;
  maxBatchDelayMs: number;
  store: Pick<Store, 'insertBatch' | 'applyMarks'>;
  log: Logger;
  metrics?: WriterMetrics;
}

/** An x-reason longer than this is cut: AMQP header tables are bounded. */
const MAX_REASON_CHARS = 1000;

interface Session {
  link: AmqpSession;
  channel?: Channel;
  deadLetters?: ConfirmChannel;
  consumerTag?: string;
  isOpen: boolean;
  /** delivery tags of this channel not acked yet (decides whether ack(allUpTo) is safe) */
  unacked: Set<number>;
}

interface Delivery {
  session: Session;
  msg: ConsumeMessage;
  messages: Envelope[];
  receipts: Receipt[];
  receivedAt: number;
}

export interface DeadLetter {
  content: Buffer;
  reason: string;
}

export interface Isolated {
  inserted: number;
  inserts: number;
  poison: { message: Envelope; reason: string }[];
}

/**
 * Inserts messages; when Postgres refuses the data of some row, bisects
 * (each half in its own transaction) until the refused rows stand alone.
 * k poison rows among n cost about k*log2(n) extra transactions.
 */
export async function insertIsolatingPoison(insert: (messages: readonly Envelope[]) => Promise<number>, messages: readonly Envelope[]): Promise<Isolated> {
  try {
    return { inserted: await insert(messages), inserts: 1, poison: [] };
  } catch (err) {
    if (!isDataError(err)) throw err;
    if (messages.length === 1) {
      const reason = `Postgres refused the row (SQLSTATE ${sqlState(err)}): ${errorMessage(err)}`;
      return { inserted: 0, inserts: 1, poison: [{ message: messages[0] as Envelope, reason }] };
    }
    const mid = messages.length >>> 1;
    const a = await insertIsolatingPoison(insert, messages.slice(0, mid));
    const b = await insertIsolatingPoison(insert, messages.slice(mid));
    return { inserted: a.inserted + b.inserted, inserts: 1 + a.inserts + b.inserts, poison: [...a.poison, ...b.poison] };
  }
}

export function createWriter(deps: WriterDeps): Writer {
  const partition = deps.partition ?? 0;
  const queue = partition === 'legacy' ? deps.topology.legacyQueue : (deps.topology.queues[partition] as string);
  const log = deps.log.child({ component: 'writer', partition });
  /** a partition's batches under its number; the legacy queue's by each message's conversation */
  const insert =
    partition === 'legacy'
      ? async (messages: readonly Envelope[]): Promise<number> => {
          const parts = new Map<number, Envelope[]>();
          for (const m of messages) {
            const p = partitionOf(m.conversation, deps.topology.partitions);
            const list = parts.get(p);
            if (list) list.push(m);
            else parts.set(p, [m]);
          }
          let inserted = 0;
          for (const [p, list] of parts) inserted += await deps.store.insertBatch(list, p);
          return inserted;
        }
      : (messages: readonly Envelope[]) => deps.store.insertBatch(messages, partition);
  const stats: WriterStats = { deliveries: 0, batches: 0, inserts: 0, messages: 0, rowsInserted: 0, deadLettered: 0, retries: 0 };

  let current: Session | undefined;
  let isClosed = false;

  let pending: Delivery[] = [];
  let pendingRows = 0;
  let storedThrough = 0;
  let lastDeliveryAt = 0;
  let batchTimer: NodeJS.Timeout | undefined;
  let flushing: Promise<void> | undefined;
  /** wakes a backoff pause early on close */
  let wake: (() => void) | undefined;
  /** dead-lettering of deliveries not (yet) in a batch */
  const sideWork = new Set<Promise<void>>();

  // ---- connection -----------------------------------------------------------

  async function consume(link: AmqpSession): Promise<void> {
    const session: Session = { link, isOpen: false, unacked: new Set() };
    const channel = await link.createChannel();
    session.channel = channel;
    session.deadLetters = await link.createConfirmChannel({ label: 'dead-letter' });
    await assertTopology(channel, deps.topology);
    // The queue of before partitions is never declared here: it is only drained while it exists.
    if (partition === 'legacy') await channel.checkQueue(queue);
    await channel.prefetch(deps.prefetch);
    if (isClosed || link.isLost) throw new Error('closed while connecting');
    session.isOpen = true;
    current = session;
    await attach(session, channel);
  }

  async function attach(session: Session, channel: Channel): Promise<void> {
    const { consumerTag } = await channel.consume(queue, (msg) => onDelivery(session, msg), { noAck: false });
    session.consumerTag = consumerTag;
  }

  /**
   * Any channel or the connection went away: the session goes as a whole.
   * Its unacked deliveries return to the queue; the batch under way keeps
   * its rows (a redelivery inserts nothing twice) but never acks on it.
   */
  function drop(link: AmqpSession): void {
    const session = current;
    // Only the current session can be open: one given up before it became current holds nothing.
    if (session?.link !== link) return;
    session.isOpen = false;
    current = undefined;
    const kept = pending.filter((d) => d.session !== session);
    if (kept.length !== pending.length) {
      pending = kept;
      pendingRows = kept.reduce((n, d) => n + d.messages.length, 0);
    }
  }

  /** close(): stop consuming, then one last attempt at what is buffered; what fails stays unacked and is redelivered. */
  async function drain(): Promise<void> {
    const session = current;
    if (session?.isOpen && session.channel && session.consumerTag) await session.channel.cancel(session.consumerTag).catch(() => undefined);
    await Promise.all([...sideWork]);
    for (;;) {
      if (flushing) await flushing;
      else if (pending.length > 0 && session?.isOpen) startFlush();
      else break;
    }
    if (batchTimer) clearTimeout(batchTimer);
    batchTimer = undefined;
    pending = [];
    pendingRows = 0;
  }

  // ---- deliveries -----------------------------------------------------------

  function onDelivery(session: Session, msg: ConsumeMessage | null): void {
    if (msg === null) {
      // The broker cancelled the consumer (queue deleted): start over, which re-asserts the topology.
      if (!isClosed) log.warn({ queue }, 'the broker cancelled the consumer; reconnecting');
      session.link.lose();
      return;
    }
    stats.deliveries++;
    lastDeliveryAt = Date.now();
    session.unacked.add(msg.fields.deliveryTag);
    const decoded = decodePayload(msg.content);
    if (!decoded.ok) {
      track(deadLetterThenAck(session, msg, [{ content: msg.content, reason: decoded.reason }]));
      return;
    }
    const valid = (): Delivery => ({ session, msg, messages: decoded.messages, receipts: decoded.receipts, receivedAt: Date.now() });
    if (decoded.invalid.length === 0) {
      enqueue(valid());
      return;
    }
    const letters = decoded.invalid.map((i) => ({
      content: Buffer.from(JSON.stringify(i.list === 'messages' ? { v: decoded.v, messages: [i.item] } : { v: decoded.v, messages: [], receipts: [i.item] })),
      reason: `invalid ${i.list === 'messages' ? 'message' : 'receipt'}: ${i.reason}`,
    }));
    if (decoded.messages.length === 0 && decoded.receipts.length === 0) {
      track(deadLetterThenAck(session, msg, letters));
      return;
    }
    // The valid rest joins a batch once the invalid items are safely in the dead-letter queue.
    track(
      deadLetter(letters).then(
        () => {
          if (session.isOpen) enqueue(valid());
        },
        (err: unknown) => deadLetterFailed(session, err),
      ),
    );
  }

  function track(work: Promise<void>): void {
    sideWork.add(work);
    void work.finally(() => sideWork.delete(work));
  }

  async function deadLetterThenAck(session: Session, msg: ConsumeMessage, letters: DeadLetter[]): Promise<void> {
    try {
      await deadLetter(letters);
      ack(session, [msg]);
    } catch (err) {
      deadLetterFailed(session, err);
    }
  }

  function deadLetterFailed(session: Session, err: unknown): void {
    // Left unacked; recycling the connection returns it to the queue for another try.
    if (!isClosed) log.warn({ err: errorMessage(err) }, 'could not dead-letter; the delivery will come again');
    session.link.lose();
  }

  /** Publishes to the dead-letter queue and resolves once the broker confirmed every item. */
  async function deadLetter(letters: DeadLetter[]): Promise<void> {
    const channel = current?.isOpen ? current.deadLetters : undefined;
    if (!channel) throw new UnavailableError(`not connected to RabbitMQ at ${broker.host}`);
    await Promise.all(
      letters.map(
        (letter) =>
          new Promise<void>((resolve, reject) => {
            try {
              channel.sendToQueue(
                deps.topology.deadLetterQueue,
                letter.content,
                { persistent: true, contentType: 'application/json', headers: { 'x-reason': letter.reason.slice(0, MAX_REASON_CHARS) } },
                (err: unknown) => (err ? reject(new UnavailableError('the broker refused a dead letter')) : resolve()),
              );
            } catch (err) {
              reject(err instanceof Error ? err : new Error(String(err)));
            }
          }),
      ),
    );
    stats.deadLettered += letters.length;
    // One line per call, not per item: a flood of bad input must not become a flood of logs.
    log.warn({ count: letters.length, reason: letters[0]?.reason }, 'dead-lettered unstorable input');
  }

  /**
   * Acks on the channel the deliveries came from, never another: a new
   * channel reuses delivery tags. One ack(allUpTo) when nothing older is
   * still outstanding on that channel, else one ack each.
   */
  function ack(session: Session, msgs: ConsumeMessage[]): void {
    if (!session.isOpen || !session.channel || msgs.length === 0) return;
    let last = msgs[0] as ConsumeMessage;
    for (const m of msgs) {
      session.unacked.delete(m.fields.deliveryTag);
      if (m.fields.deliveryTag > last.fields.deliveryTag) last = m;
    }
    const lastTag = last.fields.deliveryTag;
    let isOlderOutstanding = false;
    for (const tag of session.unacked) {
      if (tag < lastTag) {
        isOlderOutstanding = true;
        break;
      }
    }
    try {
      if (isOlderOutstanding) for (const m of msgs) session.channel.ack(m);
      else session.channel.ack(last, true);
    } catch (err) {
      // The channel closed under us: the broker redelivers, storage ignores the copies.
      log.debug({ err: errorMessage(err) }, 'ack on a closed channel skipped');
    }
  }

  // ---- batching -------------------------------------------------------------

  /** what a delivery adds to a batch: a row per message, an upsert per receipt */
  const rowsOf = (d: Delivery) => d.messages.length + d.receipts.length;

  function enqueue(delivery: Delivery): void {
    if (!delivery.session.isOpen) return; // redelivered on the next channel
    pending.push(delivery);
    pendingRows += rowsOf(delivery);
    schedule();
  }

  function schedule(): void {
    if (flushing || pending.length === 0) return;
    const first = pending[0] as Delivery;
    const wait = first.receivedAt + deps.maxBatchDelayMs - Date.now();
    if (pendingRows >= deps.maxBatchRows || wait <= 0) {
      startFlush();
      return;
    }
    batchTimer ??= setTimeout(() => {
      batchTimer = undefined;
      schedule();
    }, wait);
  }

  /** Takes whole deliveries up to maxBatchRows (at least one) and writes them. */
  function startFlush(): void {
    if (batchTimer) clearTimeout(batchTimer);
    batchTimer = undefined;
    let rows = 0;
    let n = 0;
    while (n < pending.length && (n === 0 || rows + rowsOf(pending[n] as Delivery) <= deps.maxBatchRows)) rows += rowsOf(pending[n++] as Delivery);
    const batch = pending.slice(0, n);
    pending = pending.slice(n);
    pendingRows -= rows;
    flushing = writeBatch(batch).finally(() => {
      flushing = undefined;
      schedule();
    });
  }

  async function writeBatch(batch: Delivery[]): Promise<void> {
    let attempt = 0;
    for (;;) {
      batch = batch.filter((d) => d.session.isOpen);
      if (batch.length === 0) return;
      const messages = batch.flatMap((d) => d.messages);
      const receipts = batch.flatMap((d) => d.receipts);
      const started = Date.now();
      try {
        const result = await insertIsolatingPoison(insert, messages);
        if (receipts.length > 0) await deps.store.applyMarks(receipts);
        const insertMs = Date.now() - started;
        stats.inserts += result.inserts;
        if (result.poison.length > 0) await deadLetter(result.poison.map((p) => ({ content: encodePayload([p.message]), reason: p.reason })));
        for (const [session, msgs] of groupBySession(batch)) ack(session, msgs);
        for (const m of messages) if (m.ts > storedThrough) storedThrough = m.ts;
        for (const r of receipts) if (r.ts > storedThrough) storedThrough = r.ts;
        stats.batches++;
        stats.messages += messages.length;
        stats.rowsInserted += result.inserted;
        deps.metrics?.batchStored(messages, insertMs / 1000);
        if (attempt > 0) log.info({ attempts: attempt + 1 }, 'storage works again; batch stored');
        log.debug({ deliveries: batch.length, messages: messages.length, inserted: result.inserted, poison: result.poison.length, ms: Date.now() - started }, 'batch stored');
        return;
      } catch (err) {
        stats.retries++;
        if (isClosed) {
          log.info({ messages: messages.length, err: errorMessage(err) }, 'batch not stored before shutdown; the broker redelivers it');
          return;
        }
        // The store words storage's own failures (where, why, what to do); anything else gets its message.
        const what = err instanceof UnavailableError ? err.message : `${isUnavailableError(err) ? 'storage unavailable' : 'batch insert failed'}: ${errorMessage(err)}`;
        if (attempt === 0) log.warn({ messages: messages.length }, `${what}; keeping the batch unacked and retrying`);
        else log.debug({ attempt }, `${what}; retrying`);
        await pause(backoffMs(attempt++, 100, 5000));
      }
    }
  }

  function groupBySession(batch: Delivery[]): Map<Session, ConsumeMessage[]> {
    const groups = new Map<Session, ConsumeMessage[]>();
    for (const d of batch) {
      const list = groups.get(d.session);
      if (list) list.push(d.msg);
      else groups.set(d.session, [d.msg]);
    }
    return groups;
  }

  function pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        wake = undefined;
        resolve();
      }
      wake = done;
    });
  }

  const broker = createAmqpConnection({
    url: deps.amqpUrl,
    name: `SvPersist ${queue}`,
    log,
    setup: consume,
    onLost: drop,
    drain,
    purpose: 'consuming',
    logFields: { queue },
    onFatal: deps.onFatal,
  });

  return {
    isConnected: () => current?.isOpen === true,
    progress: () => ({ idle: pending.length === 0 && flushing === undefined, storedThrough }),
    ready: () => broker.ready(),
    stats: () => ({ ...stats }),
    deliveredSince: (since) => lastDeliveryAt >= since && lastDeliveryAt > 0,
    async stepBack() {
      const session = current;
      if (!session?.isOpen || !session.channel || !session.consumerTag) return;
      const { channel } = session;
      await channel.cancel(session.consumerTag);
      lastDeliveryAt = 0;
      if (current === session && session.isOpen && !isClosed) await attach(session, channel);
    },
    close() {
      isClosed = true;
      wake?.();
      return broker.close();
    },
  };
}
