/**
 * Decides which messages were missed (PROTOCOL.md v1.2) and hands them to the
 * broker as notification events.
 *
 * Every second, in one transaction that holds NOTIFY_LOCK_KEY (another
 * SvPersist doing it: this one skips the tick), the stored rows past the
 * notifier's position (notify_state; one seq per storage partition, as a sync
 * cursor) are read in seq order. Within a partition seq order is commit order,
 * and the position moves each partition no further than its watermark (read
 * before the rows) or its own rows read, so a row committed later always lies
 * past the position. The rows accepted more than
 * NOTIFY_AFTER_MS + RECEIPT_GRACE_MS ago, and stored more than RECEIPT_GRACE_MS
 * ago, are due (up to the first that is not); for each due row the
 * recipients whose marks do not cover it and who have not muted the
 * conversation get it, grouped per recipient into events of at most 100. The
 * events go to notify_outbox and the cursor moves past the due rows, in the
 * same commit: each missed message is in exactly one event.
 *
 * Then the outbox is published (confirmed, persistent, messageId = eventId)
 * and its rows deleted. A crash between the two publishes the same events
 * again, under the same eventIds: a duplicate the receiver drops.
 */
import type { ConfirmChannel } from 'amqplib';
import type { Sequelize, Transaction } from 'sequelize';
import { createAmqpConnection, createIdFactory, createLogThrottle, errorMessage, once, UnavailableError, type Logger, type MissedMessagesEvent } from '@simplechat/shared';
import { COLUMNS, EMPTY_ID_PREFIX, WATERMARKS_SQL, createSelect, toWire, watermarkMap, type Row, type StorageProblem, type Watermark } from './store';
import { atLeast, componentArray, formatPosition, parsePosition, type Position } from './sync-cursor';
import { NOTIFY_ROUTING_KEY, assertNotifyTopology, type NotifyTopology } from './notify-topology';
import type { NotifyMetrics } from './metrics';

/** Serialises the scans of every SvPersist on the database; one-key form, apart from SEQ_LOCK_KEY. */
export const NOTIFY_LOCK_KEY = 7_345_811_024;
/** Receipts sent just in time still travel through the broker to the marks table: they get this long to land (after the ack's NOTIFY_AFTER_MS, and after the message was stored). */
export const RECEIPT_GRACE_MS = 1000;
/** stored rows read per scan, which bounds one pass's fan-out (a room of 1000 members sending that fast: 2,000,000 pairs at most; ROOM_RATE_LIMIT_PER_SEC keeps it far below); a scan that takes them all is followed at once by the next */
const SCAN_ROWS = 2000;
export const MAX_MESSAGES_PER_EVENT = 100;
/** outbox rows published per transaction */
const DISPATCH_ROWS = 100;
/** a broker that takes this long to confirm an event leaves the outbox row for the next tick */
const CONFIRM_TIMEOUT_MS = 10_000;
const WARN_EVERY_MS = 60_000;

export interface MissedDeps {
  sequelize: Sequelize;
  /** the broker's nodes (AMQP_URLS), or one URL */
  amqpUrl: string | readonly string[];
  /** the broker's notify queues differ from this version's (QUEUE_TYPE): the service stops */
  onFatal?(err: Error): void;
  topology: NotifyTopology;
  /** NOTIFY_AFTER_MS */
  afterMs: number;
  /** NOTIFY_INCLUDE_BODY */
  includeBody: boolean;
  log: Logger;
  metrics: NotifyMetrics;
  /**
   * Every receipt accepted before this time (ms) is stored: a message is decided only once the
   * receipts that could cover it (accepted up to NOTIFY_AFTER_MS after it) are in the marks table,
   * however far storage runs behind.
   */
  receiptsStoredUntil(): Promise<number>;
  /** time between two ticks (default 1000) */
  intervalMs?: number;
  onFailure?(problem: StorageProblem): void;
  now?: () => number;
}

export interface MissedNotifier {
  close(): Promise<void>;
}

// The rows past the cursor, in commit order, with what tells whether they are due. $3: the grace
// (ms) a row must also have been stored for: receipts travel the queue behind their messages,
// so when storage runs late a receipt lands after its message, not NOTIFY_AFTER_MS after its ack.
// $1 the position's smallest component (the BRIN range), $4 its 64 components (by partition).
const NEXT_SQL = `
  SELECT seq::text AS seq, partition, round(extract(epoch FROM created_at) * 1000)::int8 AS ts, left(id, 1) = '${EMPTY_ID_PREFIX}' AS empty,
         stored_at <= now() - $3::int8 * interval '1 millisecond' AS settled
  FROM messages WHERE seq > $1::int8 AND seq > ($4::int8[])[partition + 1] ORDER BY messages.seq LIMIT $2`;

// Per partition, from[p] < seq <= to[p] ($1, $2: the 64 components of each; $4, $5 their
// smallest and largest, the BRIN range): the due rows; $3 now (ms) for mutes. Recipients: the other side of a direct
// message (none for a message to oneself), or each member whose interval covers the position,
// the sender aside; then those whose delivered or read mark does not cover it and who have not
// muted the conversation. COLUMNS are the message's (t has only notify_to).
const MISSED_SQL = `
  SELECT t.notify_to, ${COLUMNS}
  FROM messages m
  CROSS JOIN LATERAL (
    SELECT m.recipient AS notify_to WHERE m.room_id IS NULL AND m.recipient <> m.sender
    UNION ALL
    SELECT rm.user_id FROM room_members rm
    WHERE m.room_id IS NOT NULL AND rm.room_id = m.room_id AND rm.from_position < m.position
      AND (rm.to_position IS NULL OR m.position <= rm.to_position) AND rm.user_id <> m.sender
  ) t
  WHERE m.seq > $4::int8 AND m.seq <= $5::int8 AND m.seq > ($1::int8[])[m.partition + 1] AND m.seq <= ($2::int8[])[m.partition + 1]
    AND left(m.id, 1) <> '${EMPTY_ID_PREFIX}'
    AND NOT EXISTS (SELECT 1 FROM marks k WHERE k.conversation_id = m.conversation_id AND k.user_id = t.notify_to
                    AND (k.delivered_up_to >= m.position OR k.read_up_to >= m.position))
    AND NOT EXISTS (SELECT 1 FROM mutes mu WHERE mu.conversation_id = m.conversation_id AND mu.user_id = t.notify_to AND mu.until_ms > $3::int8)
  ORDER BY t.notify_to, m.seq`;

const OUTBOX_INSERT_SQL = `
  INSERT INTO notify_outbox (event_id, recipient, body, first_ms)
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])`;
const CURSOR_SQL = 'SELECT last_seq::text AS last_seq, position FROM notify_state WHERE id = 1';
// last_seq: the smallest component, the place a build without partitions reads.
const MOVE_CURSOR_SQL = 'UPDATE notify_state SET last_seq = $1::int8, position = $2, updated_at = now() WHERE id = 1';
// SKIP LOCKED: several SvPersist instances publish different rows at once.
const CLAIM_SQL = `SELECT event_id, body, first_ms::text AS first_ms FROM notify_outbox ORDER BY created_at, event_id LIMIT $1 FOR UPDATE SKIP LOCKED`;
const DELETE_SQL = 'DELETE FROM notify_outbox WHERE event_id = ANY($1::text[])';
// BRIN leaves new page ranges unsummarised until autovacuum gets to them (a minute or more), and
// every unsummarised range is read by every scan: each tick summarises the newest full ranges
// itself. Never the last, partial one: a summarised range costs each row inserted into it an index
// update (its max seq grows), an unsummarised one nothing. 32: the index's pages_per_range.
const SUMMARISE_SQL = `
  SELECT coalesce(sum(brin_summarize_range('messages_seq_brin_idx', b)), 0)::int AS ranges
  FROM (SELECT (pg_relation_size('messages') / current_setting('block_size')::int8) / 32 AS full_ranges) r,
       generate_series(greatest(r.full_ranges - $1, 0) * 32, (r.full_ranges - 1) * 32, 32) AS b`;
/** full ranges looked at per tick: a few seconds of traffic at tens of thousands of messages per second */
const SUMMARISE_RANGES = 16;
/** autovacuum holds a lock summarising waits for: skip a tick rather than wait */
const SUMMARISE_LOCK_TIMEOUT_MS = 200;
export const OUTBOX_DEPTH_SQL = 'SELECT count(*)::int AS n FROM notify_outbox';

interface MissedRow extends Row {
  notify_to: string;
}

export interface OutboxEvent {
  eventId: string;
  recipient: string;
  /** the JSON posted, exactly */
  body: string;
  /** ack ts of the event's earliest message */
  firstMs: number;
}

/**
 * One recipient's missed messages (in commit order) as events of at most 100.
 * `rows` are ordered by recipient, then seq.
 */
export function toEvents(rows: readonly MissedRow[], opts: { includeBody: boolean; now: number; newEventId(): string }): OutboxEvent[] {
  const events: OutboxEvent[] = [];
  let i = 0;
  while (i < rows.length) {
    const recipient = (rows[i] as MissedRow).notify_to;
    let end = i;
    while (end < rows.length && end - i < MAX_MESSAGES_PER_EVENT && (rows[end] as MissedRow).notify_to === recipient) end++;
    const chunk = rows.slice(i, end);
    const messages = chunk.map((r) => {
      const wire = toWire(r);
      if (opts.includeBody) return wire;
      const { body: _body, ...rest } = wire;
      return rest;
    });
    const eventId = opts.newEventId();
    const event: MissedMessagesEvent = { type: 'messages.missed', eventId, recipient, messages, ts: opts.now };
    events.push({ eventId, recipient, body: JSON.stringify(event), firstMs: Math.min(...messages.map((m) => m.ts)) });
    i = end;
  }
  return events;
}

/** The notifier's position: `position` unless a build without partitions moved last_seq since (it writes last_seq only). */
function positionOfState(state: { last_seq: string; position: string | null }): Position {
  if (state.position !== null) {
    const pos = parsePosition(state.position);
    if (pos.base.toString() === state.last_seq) return pos;
  }
  return parsePosition(state.last_seq);
}

export function createMissedNotifier(deps: MissedDeps): MissedNotifier {
  const log = deps.log.child({ component: 'notify' });
  const clock = deps.now ?? Date.now;
  const select = createSelect(deps.sequelize, deps.onFailure);
  const nextEventId = createIdFactory();
  const failures = createLogThrottle(WARN_EVERY_MS);
  const intervalMs = deps.intervalMs ?? 1000;
  let confirm: ConfirmChannel | undefined;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let isClosed = false;

  /** One transaction: the due rows past the cursor become outbox events, and the cursor moves past them. */
  function scan(): Promise<{ events: number; more: boolean }> {
    return deps.sequelize.transaction(async (transaction: Transaction) => {
      const [lock] = await select<{ locked: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS locked', [NOTIFY_LOCK_KEY], transaction);
      if (!lock?.locked) return { events: 0, more: false };
      // Without fresh statistics the planner takes the new rows for many and scans the whole table.
      await deps.sequelize.query('SET LOCAL enable_seqscan = off', { transaction });
      const [state] = await select<{ last_seq: string; position: string | null }>(CURSOR_SQL, [], transaction);
      if (!state) throw new UnavailableError('notify_state has no row; run `npm run db:migrate`');
      const from = positionOfState(state);
      const now = clock();
      const dueBefore = Math.min(now - deps.afterMs - RECEIPT_GRACE_MS, (await deps.receiptsStoredUntil()) - deps.afterMs);
      const marks = watermarkMap(await select<Watermark>(WATERMARKS_SQL, [], transaction));
      const rows = await select<{ seq: string; partition: number; ts: string; empty: boolean; settled: boolean }>(NEXT_SQL, [from.base.toString(), SCAN_ROWS, RECEIPT_GRACE_MS, componentArray(from)], transaction);
      // bound: no row past it was looked at (the first row not due yet, or the last one read when the scan was full)
      let bound: bigint | undefined;
      const due = new Map<number, bigint>();
      for (const r of rows) {
        // An empty-position row's time is when it was marked, not an ack: it never holds the cursor back.
        if (!r.empty && (Number(r.ts) > dueBefore || !r.settled)) {
          bound = BigInt(r.seq) - 1n;
          break;
        }
        due.set(Number(r.partition), BigInt(r.seq));
      }
      const isCut = bound !== undefined;
      if (bound === undefined && rows.length === SCAN_ROWS) bound = BigInt((rows[rows.length - 1] as { seq: string }).seq);
      // Each partition: to its watermark (or the bound), and at least past its own due rows.
      const next = new Map<number, bigint>();
      for (const [p, mark] of marks) next.set(p, bound !== undefined && bound < mark ? bound : mark);
      for (const [p, seq] of due) if ((next.get(p) ?? -1n) < seq) next.set(p, seq);
      const to = atLeast(from, next, true);
      const moved = formatPosition(to);
      if (moved === formatPosition(from)) return { events: 0, more: false };
      const toArray = componentArray(to);
      const top = toArray.reduce((a, b) => (BigInt(b) > BigInt(a) ? b : a));
      const missed = await select<MissedRow>(MISSED_SQL, [componentArray(from), toArray, now, from.base.toString(), top], transaction);
      const events = toEvents(missed, { includeBody: deps.includeBody, now, newEventId: () => nextEventId(now) });
      if (events.length > 0) {
        await select(OUTBOX_INSERT_SQL, [events.map((e) => e.eventId), events.map((e) => e.recipient), events.map((e) => e.body), events.map((e) => e.firstMs)], transaction);
      }
      await select(MOVE_CURSOR_SQL, [to.base.toString(), moved], transaction);
      return { events: events.length, more: !isCut && rows.length === SCAN_ROWS };
    });
  }

  function publish(channel: ConfirmChannel, e: { event_id: string; body: string; first_ms: string }): Promise<void> {
    return new Promise((resolve, reject) => {
      const timeout = setTimeout(() => reject(new UnavailableError(`the broker did not confirm event ${e.event_id} within ${CONFIRM_TIMEOUT_MS} ms`)), CONFIRM_TIMEOUT_MS);
      try {
        channel.publish(
          deps.topology.exchange,
          NOTIFY_ROUTING_KEY,
          Buffer.from(e.body),
          { persistent: true, contentType: 'application/json', messageId: e.event_id, headers: { 'x-missed-at-ms': Number(e.first_ms) + deps.afterMs } },
          (err: unknown) => {
            clearTimeout(timeout);
            if (err) reject(new UnavailableError(`the broker refused event ${e.event_id}`));
            else resolve();
          },
        );
      } catch (err) {
        clearTimeout(timeout);
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  /** Publishes the outbox, a confirmed batch per transaction; a failure leaves the rows for the next tick. */
  async function dispatch(): Promise<void> {
    for (;;) {
      const channel = confirm;
      if (!channel || isClosed) return;
      const published = await deps.sequelize.transaction(async (transaction: Transaction) => {
        const rows = await select<{ event_id: string; body: string; first_ms: string }>(CLAIM_SQL, [DISPATCH_ROWS], transaction);
        if (rows.length === 0) return 0;
        await Promise.all(rows.map((r) => publish(channel, r)));
        await select(DELETE_SQL, [rows.map((r) => r.event_id)], transaction);
        return rows.length;
      });
      if (published < DISPATCH_ROWS) return;
    }
  }

  let canSummarise = true;
  /** Keeps the BRIN index's full ranges summarised; a failure costs only speed, so it never stops the tick. */
  async function summarise(): Promise<void> {
    if (!canSummarise) return;
    try {
      await deps.sequelize.transaction(async (transaction: Transaction) => {
        await deps.sequelize.query(`SET LOCAL lock_timeout = ${SUMMARISE_LOCK_TIMEOUT_MS}`, { transaction });
        await select(SUMMARISE_SQL, [SUMMARISE_RANGES], transaction);
      });
    } catch (err) {
      if (/must be owner/i.test(errorMessage(err))) {
        canSummarise = false;
        log.warn({ err: errorMessage(err) }, 'the database user does not own messages_seq_brin_idx, so autovacuum alone summarises it and each notification pass reads more rows; run SvPersist as the owner of the tables');
      } else log.debug({ err: errorMessage(err) }, 'BRIN summarisation skipped this tick');
    }
  }

  async function tick(): Promise<void> {
    try {
      await summarise();
      for (;;) {
        const { events, more } = await scan();
        if (events > 0) {
          deps.metrics.created(events);
          log.debug({ events }, 'notification events created');
        }
        if (!more || isClosed) break;
      }
      await dispatch();
      const streak = failures.end();
      if (streak > 0) log.info({ failedTicks: streak }, 'notifications work again');
    } catch (err) {
      if (failures.shouldLog()) log.warn({ err: errorMessage(err) }, 'notifications paused (storage or broker unavailable); the next tick takes up where this one stopped');
      else log.debug({ err: errorMessage(err) }, 'notification tick failed');
    }
  }

  function schedule(delayMs: number): void {
    if (isClosed) return;
    timer = setTimeout(() => {
      timer = undefined;
      running = tick().finally(() => {
        running = undefined;
        schedule(intervalMs);
      });
    }, delayMs);
  }

  const broker = createAmqpConnection({
    url: deps.amqpUrl,
    onFatal: deps.onFatal,
    name: `SvPersist ${deps.topology.exchange} outbox`,
    log,
    async setup(session) {
      const channel = await session.createConfirmChannel({ label: 'notify outbox' });
      await assertNotifyTopology(channel, deps.topology);
      confirm = channel;
    },
    onLost: () => {
      confirm = undefined;
    },
    purpose: 'publishing notifications',
    logFields: { exchange: deps.topology.exchange },
  });

  schedule(0);

  return {
    close: once(async () => {
      isClosed = true;
      if (timer) clearTimeout(timer);
      timer = undefined;
      await running;
      await broker.close();
    }),
  };
}
