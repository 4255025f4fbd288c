/**
 * The SQL of SvPersist: one idempotent multi-row insert per batch, and the
 * reads behind /internal (history, sync, cursor, by-client). Every statement is
 * parameterized; arrays travel as bind parameters (pg turns a JS array into a
 * Postgres array literal), so a batch of any size is one statement with nine
 * parameters, far from the 65535-parameter limit.
 */
import { MIGRATIONS } from './migrations';
import { CURSOR_PARTITIONS, atLeast, componentArray, formatPosition, parsePosition, positionOf, } from './sync-cursor';
import type { ReadRoute } from './read-replica';
import { QueryTypes, ConnectionError, TimeoutError, type Sequelize, type Transaction } from 'sequelize';
import { conversationKey, directConversation, roomConversation, peerOf, UnavailableError, SimpleChatError, errorMessage, type EmptyPositions, type Envelope, type Receipt, type WireMessage } from '@simplechat/shared';

/**
 * Partition 0's lock, in the one-key form a build without partitions takes for every
 * batch (so the two can run side by side during an upgrade: that build's rows are
 * partition 0's). Every batch of a partition takes its partition's lock before stamping
 * seq, so within a partition commits happen in seq order and "seq > the partition's
 * component" never skips a row committed later. Any constant works as long as every
 * writer of the database uses the same one.
 */
export const SEQ_LOCK_KEY = 7_345_811_023;
/** The lock class of partitions 1..63: pg_advisory_xact_lock(PARTITION_LOCK_CLASS, partition), apart from the one-key locks. */
export const PARTITION_LOCK_CLASS = 734_581_102;

/** The SQL expression that takes partition p's lock until commit (`try`: without waiting; true when taken). */
export function partitionLockSql(partition: number | string, opts: { try?: boolean } = {}): string {
  const fn = opts.try ? 'pg_try_advisory_xact_lock' : 'pg_advisory_xact_lock';
  if (typeof partition === 'number') {
    checkPartition(partition);
    return partition === 0 ? `${fn}(${SEQ_LOCK_KEY})` : `${fn}(${PARTITION_LOCK_CLASS}, ${partition})`;
  }
  // a column or expression holding the partition
  return `CASE WHEN ${partition} = 0 THEN ${fn}(${SEQ_LOCK_KEY}) ELSE ${fn}(${PARTITION_LOCK_CLASS}, ${partition}) END`;
}

export function checkPartition(partition: number): void {
  if (!Number.isInteger(partition) || partition < 0 || partition >= CURSOR_PARTITIONS) throw new RangeError(`partition ${partition} is outside 0..${CURSOR_PARTITIONS - 1}`);
}

export interface HistoryQuery {
  user: string;
  with: string;
  before?: string | undefined;
  limit: number;
}

export interface RoomHistoryQuery {
  user: string;
  room: string;
  before?: string | undefined;
  limit: number;
}

/** Room history refused: no such room (or ended), or the caller is not a current member. */
export interface HistoryRefusal {
  ok: false;
  code: 'not_found' | 'forbidden';
  message: string;
}

export interface SyncQuery {
  user: string;
  after?: string | undefined;
  limit: number;
}

export interface Page {
  messages: WireMessage[];
  more: boolean;
  /** the empty positions among the page's */
  empty?: number[];
}

export interface SyncPage {
  messages: WireMessage[];
  more: boolean;
  cursor: string;
  /** positions that became empty within the storage range the page covers */
  empty?: EmptyPositions[];
}

export interface CursorInfo {
  cursor: string;
  newestTs: number | null;
}

export interface Store {
  /** Inserts the messages in one transaction; rows whose id or (sender, clientId) exist (stored, or earlier in the batch) are skipped. Resolves with the rows inserted. */
  insertBatch(messages: readonly Envelope[], partition?: number): Promise<number>;
  history(q: HistoryQuery): Promise<Page>;
  /** A room's history, for its current members only. */
  history(q: RoomHistoryQuery): Promise<({ ok: true } & Page) | HistoryRefusal>;
  sync(q: SyncQuery): Promise<SyncPage>;
  cursor(): Promise<CursorInfo>;
  byClient(sender: string, clientId: string): Promise<WireMessage | null>;
  /** Raises each user's marks in its conversation to the receipts' (never lowers one). */
  applyMarks(receipts: readonly Receipt[]): Promise<void>;
  /** Hands out the next `count` positions of a conversation; resolves with the last of them. */
  reservePositions(conversation: string, count: number): Promise<number>;
  /** The same for several conversations at once (each named once); resolves with the last position of each, in order. */
  reserveBlocks(blocks: readonly { conversation: string; count: number }[]): Promise<number[]>;
  /** Asks Postgres whether storage can do its job: it answers within timeoutMs, the database exists and is migrated. Never rejects. */
  inspect(timeoutMs: number): Promise<StorageStatus>;
}

/** Why storage cannot do its job when it is not the data's fault; each one an operator fixes differently. */
export type StorageProblem = 'unreachable' | 'no_database' | 'refused' | 'not_migrated' | 'no_schema' | 'schema_behind';

export interface StorageStatus {
  isReady: boolean;
  problem?: StorageProblem;
  /** what is wrong and what to do, in one line (no password); absent when ready */
  reason?: string;
}

export interface StoreDeps {
  sequelize: Sequelize;
  /** where history and sync read (a streaming replica, falling back to the primary); default: the primary */
  reads?: ReadRoute;
  /** told when a query fails because of storage's state (down, no database, not migrated), not its data */
  onFailure?(problem: StorageProblem): void;
}

// One statement, one round trip, its own transaction: the seq lock is taken by
// the CTE before any row exists to stamp (every row joins the lock's one row, and
// nextval runs in the projection of that join), and released at commit. The
// cursor row takes the newest stored row of the batch in the same transaction
// (a data-modifying CTE runs to completion whether or not it is read).
// A batch is first inserted as it is: nearly every batch is all new rows, and a
// plain insert spares Postgres the check of both unique indexes ahead of each
// row that ON CONFLICT makes (measured: about 9% of its CPU per stored row). A
// batch holding a row already stored (a redelivery, a client's retry) fails as a
// whole with unique_violation and is inserted again skipping the stored rows.
const insertSql = (skipStored: boolean, partition: number) => `
  WITH seq_lock AS MATERIALIZED (SELECT ${partitionLockSql(partition)}),
  inserted AS (
    INSERT INTO messages (id, seq, partition, sender, recipient, room_id, conversation_id, position, client_id, body, created_at)
    SELECT m.id, nextval('messages_seq'), ${partition}, m.sender, m.recipient, m.room_id, m.conversation_id, m.position, m.client_id, m.body, to_timestamp(m.ts / 1000.0)
    FROM seq_lock, unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::int8[], $9::text[])
      AS m(id, sender, recipient, conversation_id, position, client_id, body, ts, room_id)
    ${skipStored ? 'ON CONFLICT DO NOTHING' : ''}
    RETURNING id, seq, created_at
  ),
  cursor_moved AS (
    UPDATE messages_cursor SET seq = newest.seq, created_at = newest.created_at, moved_at = now()
    FROM (SELECT seq, created_at FROM inserted ORDER BY seq DESC LIMIT 1) AS newest
    WHERE messages_cursor.id = ${partition + 1}
  )
  SELECT count(*)::int AS inserted, coalesce(array_agg(id), '{}') AS ids FROM inserted`;
/** The insert statements of each partition, made once. */
const insertStatements = Array.from({ length: CURSOR_PARTITIONS }, (_, p) => ({ plain: insertSql(false, p), skipping: insertSql(true, p) }));
// A partition's watermark row is made (under its lock, at the sequence's current value) in a
// transaction of its own before its first batch: a position read before that row existed
// holds for the partition, since all of its rows draw seqs handed out after it.
const ENSURE_PARTITION_SQL = (partition: number) => `
  WITH seq_lock AS MATERIALIZED (SELECT ${partitionLockSql(partition)})
  INSERT INTO messages_cursor (id, partition, seq, created_at, moved_at)
  SELECT ${partition + 1}, ${partition}, CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END, NULL, now()
  FROM seq_lock, messages_seq s
  ON CONFLICT (id) DO NOTHING`;
const UNIQUE_VIOLATION = '23505';
// Which rows of a batch skipped by ON CONFLICT are stored already (by id, or by sender and client id).
const KNOWN_SQL = `
  SELECT m.id FROM unnest($1::text[], $2::text[], $3::text[]) AS m(id, sender, client_id)
  WHERE EXISTS (SELECT 1 FROM messages s WHERE s.id = m.id) OR EXISTS (SELECT 1 FROM messages s WHERE s.sender = m.sender AND s.client_id = m.client_id)`;

/**
 * Empty positions (PROTOCOL.md "Positions") are rows of messages too, marked by
 * an id no msgId has (msgIds are ULIDs: digits and capitals): the unique
 * (conversation_id, position) index then refuses a message at an empty position
 * with no cost to the usual insert, and history and sync read them in the
 * order they read messages. empty-positions.ts writes them.
 */
export const EMPTY_ID_PREFIX = '~';
const isEmptyRow = (row: { id: string }) => row.id.startsWith(EMPTY_ID_PREFIX);


// ts and seq as text: int8 arrives as a string from pg anyway, and an exact ms
// count needs no float. ORDER BY always qualifies (messages.seq, m.seq): a bare
// name would sort by the text output column.
export const COLUMNS = `id, sender, recipient, room_id, body, round(extract(epoch FROM created_at) * 1000)::int8::text AS ts, seq::text AS seq, position::text AS position`;

// History follows positions (acceptance order in the conversation); `before` names a message of it.
const HISTORY_SQL = `SELECT ${COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY messages.position DESC LIMIT $2`;
const HISTORY_BEFORE_SQL = `
  SELECT ${COLUMNS} FROM messages
  WHERE conversation_id = $1 AND position < (SELECT b.position FROM messages b WHERE b.id = $3 AND b.conversation_id = $1)
  ORDER BY messages.position DESC LIMIT $2`;

// A room's history is for its current members; one statement tells a missing or ended room, a non-member and a member apart.
const ROOM_ACCESS_SQL = `
  SELECT r.ended_at IS NOT NULL AS ended,
         EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = r.id AND m.user_id = $2 AND m.to_position IS NULL) AS member
  FROM rooms r WHERE r.id = $1`;

// Several conversations in one statement, locked in key order (two gateways' requests cannot deadlock).
const RESERVE_BLOCKS_SQL = `
  INSERT INTO conversation_positions AS p (conversation_id, reserved)
  SELECT c, n FROM unnest($1::text[], $2::int8[]) AS r(c, n) ORDER BY c
  ON CONFLICT (conversation_id) DO UPDATE SET reserved = p.reserved + excluded.reserved
  RETURNING conversation_id, reserved::text AS reserved`;

// The highest position handed out in a conversation only grows; a new conversation starts at `count`.
const RESERVE_POSITIONS_SQL = `
  INSERT INTO conversation_positions AS p (conversation_id, reserved) VALUES ($1, $2)
  ON CONFLICT (conversation_id) DO UPDATE SET reserved = p.reserved + $2
  RETURNING reserved::text AS reserved`;

// One index-ordered scan per side (recipient, seq) and (sender, seq), merged:
// an OR would make Postgres bitmap-scan and sort every row of the user past
// the cursor. Self-messages come through the recipient side only; room rows
// (recipient NULL) through the third branch only: per membership interval of
// the user, the room's rows past the cursor in (room_id, seq) order, kept when
// their position lies in the interval. Intervals of one room never overlap, so
// no row comes twice. A closed interval still reads the room's rows stored
// since the cursor (a message accepted before the user left may be stored
// later), which is the room's recent traffic, not its history.
// Past a position: $2 is its smallest component (the index range), $4 its 64 components (the
// filter, by the row's partition). Components stay close to each other (every partition draws
// from one sequence, and an idle one's watermark moves every second), so the range holds few
// rows the filter drops.
const SYNC_SQL = `
  SELECT ${COLUMNS}, m.partition FROM (
    (SELECT * FROM messages WHERE recipient = $1 AND seq > $2::int8 AND seq > ($4::int8[])[partition + 1] ORDER BY seq LIMIT $3)
    UNION ALL
    (SELECT * FROM messages WHERE sender = $1 AND seq > $2::int8 AND seq > ($4::int8[])[partition + 1] AND recipient <> $1 ORDER BY seq LIMIT $3)
    UNION ALL
    (SELECT r.* FROM room_members i
       CROSS JOIN LATERAL (
         SELECT * FROM messages
         WHERE room_id = i.room_id AND seq > $2::int8 AND seq > ($4::int8[])[partition + 1] AND position > i.from_position AND (i.to_position IS NULL OR position <= i.to_position)
         ORDER BY seq LIMIT $3
       ) r
     WHERE i.user_id = $1 AND (i.to_position IS NULL OR i.to_position > i.from_position)
     ORDER BY r.seq LIMIT $3)
  ) m
  ORDER BY m.seq LIMIT $3`;

// Each partition's watermark, kept by every batch's transaction (and moved by the idle tick):
// a batch still in flight is not visible here, and gets a larger seq than its partition's
// watermark. ts: the newest stored row's of the partition.
export const WATERMARKS_SQL = `SELECT partition, seq::text AS seq, round(extract(epoch FROM created_at) * 1000)::int8::text AS ts FROM messages_cursor`;

export interface Watermark {
  partition: number;
  seq: string;
  ts: string | null;
}

/** Watermarks by partition. */
export function watermarkMap(rows: readonly Watermark[]): Map<number, bigint> {
  return new Map(rows.map((r) => [Number(r.partition), BigInt(r.seq)]));
}

const BY_CLIENT_SQL = `SELECT ${COLUMNS} FROM messages WHERE sender = $1 AND client_id = $2`;

// Whether the schema is there, and which migrations were applied (sequelize-cli's record):
// a database one migration behind is caught too. to_regclass follows search_path, as the
// queries above do; without the record the second query is never run.
const SCHEMA_SQL = `SELECT to_regclass('messages') IS NOT NULL AS has_messages, to_regclass('"SequelizeMeta"') IS NOT NULL AS has_meta`;
const APPLIED_SQL = 'SELECT name FROM "SequelizeMeta"';

export interface Row {
  id: string;
  sender: string;
  recipient: string | null;
  room_id: string | null;
  body: string;
  ts: string;
  seq: string;
  position: string;
}

/** v1 shape (`to`) for direct rows, v1.1 room shape (`room`) for room rows. */
export function toWire(row: Row): WireMessage {
  const target = row.room_id !== null ? { room: row.room_id } : { to: row.recipient as string };
  return { msgId: row.id, from: row.sender, ...target, body: row.body, ts: Number(row.ts), seq: Number(row.position) };
}

/** The SQLSTATE of a failed query, when Postgres sent one. */
export function sqlState(err: unknown): string | undefined {
  const e = err as { parent?: { code?: unknown }; original?: { code?: unknown }; code?: unknown } | null;
  const code = e?.parent?.code ?? e?.original?.code ?? e?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * A failure caused by the data of a row: it fails the same way on every retry.
 * Class 22 (data exception: invalid byte sequence, value too long, out of
 * range) and integrity errors other than the unique ones ON CONFLICT absorbs.
 */
export function isDataError(err: unknown): boolean {
  const code = sqlState(err);
  return code !== undefined && (code.startsWith('22') || code === '23514' || code === '23502');
}

/** Postgres is unreachable, restarting, overloaded or too slow: worth retrying later. */
export function isUnavailableError(err: unknown): boolean {
  if (err instanceof ConnectionError || err instanceof TimeoutError) return true;
  const code = sqlState(err);
  if (code === undefined) return true; // socket errors: ECONNRESET, "Connection terminated", query_timeout
  return /^(08|53|57|58)/.test(code) || code === '40001' || code === '40P01';
}

/**
 * The storage problem behind a failed query, or undefined when it is not one
 * (data errors, unique violations, serialization conflicts, bugs).
 */
export function storageProblemOf(err: unknown): StorageProblem | undefined {
  const code = sqlState(err);
  if (code === '3D000') return 'no_database';
  // class 28: bad password or user; 42501: the user may not touch the tables
  if (code?.startsWith('28') || code === '42501') return 'refused';
  // undefined table, column or schema: the database is behind this build
  if (code === '42P01' || code === '42703' || code === '3F000') return 'not_migrated';
  // socket errors and connect timeouts have no SQLSTATE; 08 connection, 57 shutdown or cancelled (statement_timeout)
  if (err instanceof ConnectionError || err instanceof TimeoutError || code === undefined || /^(08|57)/.test(code)) return 'unreachable';
  return undefined;
}

/** Where the database is, as an operator writes it in DATABASE_URL (never its password). */
export interface StorageWhere {
  hostPort: string;
  database: string;
  user: string;
}

export function storageWhere(sequelize: Sequelize): StorageWhere {
  const { host, port, database, username } = sequelize.config;
  const h = host ?? 'localhost';
  return { hostPort: `${h.includes(':') ? `[${h}]` : h}:${port ?? 5432}`, database, user: username };
}

/** One line: what is wrong and what to do. `detail` is Postgres's (or the socket's) own message. */
export function describeStorageProblem(problem: StorageProblem, where: StorageWhere, detail: string): string {
  const { hostPort, database, user } = where;
  const migrate = 'run `npm run db:migrate`';
  switch (problem) {
    case 'unreachable':
      return `Postgres at ${hostPort} does not answer (${detail}); check DATABASE_URL, or start Postgres`;
    case 'no_database':
      return `Postgres at ${hostPort} has no database "${database}"; create it with \`npm run db:create\` and \`npm run db:migrate\` (\`npm start\` does both), or fix DATABASE_URL`;
    case 'refused':
      return `Postgres at ${hostPort} refused user "${user}" on database "${database}" (${detail}); check the user and password in DATABASE_URL`;
    case 'not_migrated':
      return `Postgres database ${hostPort}/${database} is not migrated for this build (${detail}); ${migrate}`;
    case 'no_schema':
      return `Postgres database ${hostPort}/${database} has no SimpleChat schema (no table messages); ${migrate}`;
    case 'schema_behind':
      return `Postgres database ${hostPort}/${database} is behind the migrations (${detail}); ${migrate}`;
  }
}

/** A failure of storage's state becomes a one-line UnavailableError (a 503, no stack logged); anything else is left as it is. */
export function asStorageFailure(err: unknown, where: StorageWhere, onFailure?: (problem: StorageProblem) => void): unknown {
  const problem = storageProblemOf(err);
  if (!problem) return err;
  onFailure?.(problem);
  const what = problem === 'unreachable' ? 'storage unavailable' : 'storage not ready';
  return new UnavailableError(`${what}: ${describeStorageProblem(problem, where, errorMessage(err))}`, { cause: err });
}

/** A failed read or change: storage's state, an outage worth retrying (both 503), or a query that failed. */
export function asQueryFailure(err: unknown, where: StorageWhere, onFailure?: (problem: StorageProblem) => void): Error {
  if (err instanceof SimpleChatError) return err;
  const failure = asStorageFailure(err, where, onFailure);
  if (failure !== err) return failure as Error;
  if (isUnavailableError(err)) return new UnavailableError(`storage unavailable: ${errorMessage(err)}`, { cause: err });
  return new SimpleChatError('storage', `query failed: ${errorMessage(err)}`, { cause: err });
}

// Rows in key order, so that concurrent writers take their row locks in one order.
const MARKS_SQL = `
  INSERT INTO marks (conversation_id, user_id, delivered_up_to, read_up_to)
  SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[])
  ON CONFLICT (conversation_id, user_id) DO UPDATE SET
    delivered_up_to = GREATEST(marks.delivered_up_to, excluded.delivered_up_to),
    read_up_to = GREATEST(marks.read_up_to, excluded.read_up_to),
    updated_at = now()
  WHERE excluded.delivered_up_to > marks.delivered_up_to OR excluded.read_up_to > marks.read_up_to`;

export type Select = <T extends object>(sql: string, bind: unknown[], transaction?: Transaction) => Promise<T[]>;

/** A SELECT whose failure becomes the same errors as every other storage read's. */
export function createSelect(sequelize: Sequelize, onFailure?: (problem: StorageProblem) => void): Select {
  const where = storageWhere(sequelize);
  return async <T extends object>(sql: string, bind: unknown[], transaction?: Transaction): Promise<T[]> => {
    try {
      return await sequelize.query<T>(sql, { bind, type: QueryTypes.SELECT, ...(transaction ? { transaction } : {}) });
    } catch (err) {
      throw asQueryFailure(err, where, onFailure);
    }
  };
}

export function createStore(deps: StoreDeps): Store {
  const { sequelize } = deps;
  const where = storageWhere(sequelize);
  const select = createSelect(sequelize, deps.onFailure);
  // History and sync may read a replica; everything else reads the primary.
  const reads: ReadRoute = deps.reads ?? { run: (read) => read(select) };
  /** partitions whose watermark row this store has seen made */
  const ensured = new Set<number>();

  async function ensurePartition(partition: number): Promise<void> {
    if (ensured.has(partition)) return;
    await sequelize.query(ENSURE_PARTITION_SQL(partition));
    ensured.add(partition);
  }

  async function reserveBlocks(blocks: readonly { conversation: string; count: number }[]): Promise<number[]> {
    if (blocks.length === 0) return [];
    const rows = await select<{ conversation_id: string; reserved: string }>(RESERVE_BLOCKS_SQL, [blocks.map((b) => b.conversation), blocks.map((b) => b.count)]);
    const upTo = new Map(rows.map((r) => [r.conversation_id, Number(r.reserved)]));
    return blocks.map((b) => upTo.get(b.conversation) ?? Number.NaN);
  }

  async function reservePositions(conversation: string, count: number): Promise<number> {
    const [row] = await select<{ reserved: string }>(RESERVE_POSITIONS_SQL, [conversation, count]);
    return Number(row?.reserved);
  }

  /** Messages queued before positions existed (seq 0) get theirs here, from the same counter as the gateways'. */
  async function numberUnpositioned(conversations: string[], positions: number[]): Promise<void> {
    const wanting = new Map<string, number[]>();
    positions.forEach((p, i) => {
      if (p !== 0) return;
      const key = conversations[i] as string;
      const list = wanting.get(key);
      if (list) list.push(i);
      else wanting.set(key, [i]);
    });
    for (const [conversation, rows] of wanting) {
      const upTo = await reservePositions(conversation, rows.length);
      rows.forEach((row, k) => (positions[row] = upTo - rows.length + 1 + k));
    }
  }

  async function historyPage(conversation: string, before: string | undefined, limit: number): Promise<Page> {
    const rows = await reads.run((read) => (before === undefined ? read<Row>(HISTORY_SQL, [conversation, limit + 1]) : read<Row>(HISTORY_BEFORE_SQL, [conversation, limit + 1, before])));
    const more = rows.length > limit;
    const page = (more ? rows.slice(0, limit) : rows).reverse();
    const empty = page.filter(isEmptyRow).map((r) => Number(r.position));
    return { messages: page.filter((r) => !isEmptyRow(r)).map(toWire), more, ...(empty.length > 0 ? { empty } : {}) };
  }

  function history(q: HistoryQuery): Promise<Page>;
  function history(q: RoomHistoryQuery): Promise<({ ok: true } & Page) | HistoryRefusal>;
  async function history(q: HistoryQuery | RoomHistoryQuery): Promise<Page | ({ ok: true } & Page) | HistoryRefusal> {
    if (!('room' in q)) return historyPage(conversationKey(directConversation(q.user, q.with)), q.before, q.limit);
    const [access] = await select<{ ended: boolean; member: boolean }>(ROOM_ACCESS_SQL, [q.room, q.user]);
    if (!access) return { ok: false, code: 'not_found', message: `room ${q.room} does not exist; check the room id` };
    if (access.ended) return { ok: false, code: 'not_found', message: `room ${q.room} has ended (its last member left); its history is no longer served` };
    if (!access.member) return { ok: false, code: 'forbidden', message: `user ${q.user} is not a member of room ${q.room}; only current members read its history` };
    return { ok: true, ...(await historyPage(conversationKey(roomConversation(q.room)), q.before, q.limit)) };
  }

  return {
    reservePositions,
    reserveBlocks,

    async applyMarks(receipts) {
      // One row per (conversation, user): a read mark counts as delivered too.
      const byKey = new Map<string, { conversation: string; user: string; delivered: number; read: number }>();
      for (const r of receipts) {
        const conversation = conversationKey(r.conversation);
        const key = `${conversation}\n${r.user}`;
        let row = byKey.get(key);
        if (!row) byKey.set(key, (row = { conversation, user: r.user, delivered: 0, read: 0 }));
        row.delivered = Math.max(row.delivered, r.upTo);
        if (r.kind === 'read') row.read = Math.max(row.read, r.upTo);
      }
      const rows = [...byKey.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, row]) => row);
      try {
        await sequelize.query(MARKS_SQL, { bind: [rows.map((r) => r.conversation), rows.map((r) => r.user), rows.map((r) => r.delivered), rows.map((r) => r.read)] });
      } catch (err) {
        throw asStorageFailure(err, where, deps.onFailure);
      }
    },

    async insertBatch(messages, partition = 0) {
      if (messages.length === 0) return 0;
      checkPartition(partition);
      const { plain: INSERT_SQL, skipping: INSERT_SKIPPING_STORED_SQL } = insertStatements[partition] as { plain: string; skipping: string };
      const n = messages.length;
      const ids = new Array<string>(n);
      const senders = new Array<string>(n);
      const recipients = new Array<string | null>(n);
      const rooms = new Array<string | null>(n);
      const conversations = new Array<string>(n);
      const positions = new Array<number>(n);
      const clientIds = new Array<string>(n);
      const bodies = new Array<string>(n);
      const timestamps = new Array<number>(n);
      messages.forEach((m, i) => {
        const c = m.conversation;
        ids[i] = m.msgId;
        senders[i] = m.from;
        recipients[i] = c.kind === 'direct' ? peerOf(c, m.from) : null;
        rooms[i] = c.kind === 'room' ? c.id : null;
        conversations[i] = conversationKey(c);
        positions[i] = m.seq;
        clientIds[i] = m.clientId;
        bodies[i] = m.body;
        timestamps[i] = m.ts;
      });
      await numberUnpositioned(conversations, positions);
      // Only storage's own failures are wrapped: the writer tells data errors from outages by their SQLSTATE.
      const bind = [ids, senders, recipients, conversations, positions, clientIds, bodies, timestamps, rooms];
      const run = (sql: string, values: unknown[]) => sequelize.query<{ inserted: number; ids: string[] }>(sql, { bind: values, type: QueryTypes.SELECT });
      try {
        await ensurePartition(partition);
        try {
          return (await run(INSERT_SQL, bind))[0]?.inserted ?? 0;
        } catch (err) {
          if (sqlState(err) !== UNIQUE_VIOLATION) throw err;
        }
        const [first] = await run(INSERT_SKIPPING_STORED_SQL, bind);
        let inserted = first?.inserted ?? 0;
        const taken = new Set(first?.ids ?? []);
        const skipped = ids.map((id, i) => i).filter((i) => !taken.has(ids[i] as string));
        if (skipped.length === 0) return inserted;
        // Skipped and not stored: its position was reported empty meanwhile (its message was
        // stuck past EMPTY_AFTER_MS). It is stored all the same, at a new position.
        const known = new Set((await run(KNOWN_SQL, [skipped.map((i) => ids[i]), skipped.map((i) => senders[i]), skipped.map((i) => clientIds[i])])).map((r) => (r as unknown as { id: string }).id));
        const moved = skipped.filter((i) => !known.has(ids[i] as string));
        if (moved.length === 0) return inserted;
        for (const i of moved) positions[i] = 0;
        const pick = <T>(list: T[]) => moved.map((i) => list[i] as T);
        const again = [pick(ids), pick(senders), pick(recipients), pick(conversations), pick(positions), pick(clientIds), pick(bodies), pick(timestamps), pick(rooms)];
        await numberUnpositioned(again[3] as string[], again[4] as number[]);
        inserted += (await run(INSERT_SKIPPING_STORED_SQL, again))[0]?.inserted ?? 0;
        return inserted;
      } catch (err) {
        throw asStorageFailure(err, where, deps.onFailure);
      }
    },

    history,

    async sync(q) {
      const after = q.after ?? '0';
      const prev = parsePosition(q.after);
      // The watermarks first: every row at or below one was committed before the rows are
      // read, so the rows' read sees them all.
      const { marks, rows } = await reads.run(async (read) => {
        const marks = watermarkMap(await read<Watermark>(WATERMARKS_SQL, []));
        return { marks, rows: await read<Row & { partition: number }>(SYNC_SQL, [q.user, prev.base.toString(), q.limit + 1, componentArray(prev)]) };
      });
      const more = rows.length > q.limit;
      const page = more ? rows.slice(0, q.limit) : rows;
      const last = page[page.length - 1];
      let cursor = after;
      if (last) {
        // Each partition moves to its watermark, or to the page's last seq when the page was
        // cut there; and at least to its own rows in the page (all of the partition's rows up
        // to one of them were committed before it, so the page holds them).
        const cut = more ? BigInt(last.seq) : undefined;
        const next = new Map<number, bigint>();
        for (const [p, mark] of marks) next.set(p, cut !== undefined && cut < mark ? cut : mark);
        for (const r of page) {
          const p = Number(r.partition);
          const seq = BigInt(r.seq);
          if ((next.get(p) ?? -1n) < seq) next.set(p, seq);
        }
        cursor = formatPosition(atLeast(prev, next, true));
      }
      const empties = new Map<string, EmptyPositions>();
      for (const r of page) {
        if (!isEmptyRow(r)) continue;
        const key = r.room_id ?? (r.sender === q.user ? (r.recipient as string) : r.sender);
        let entry = empties.get(key);
        if (!entry) empties.set(key, (entry = r.room_id !== null ? { room: r.room_id, seqs: [] } : { with: key, seqs: [] }));
        entry.seqs.push(Number(r.position));
      }
      return { messages: page.filter((r) => !isEmptyRow(r)).map(toWire), cursor, more, ...(empties.size > 0 ? { empty: [...empties.values()] } : {}) };
    },

    async cursor() {
      const rows = await select<Watermark>(WATERMARKS_SQL, []);
      if (rows.length === 0) return { cursor: '0', newestTs: null };
      const stamps = rows.filter((r) => r.ts !== null).map((r) => Number(r.ts));
      return { cursor: formatPosition(positionOf(watermarkMap(rows))), newestTs: stamps.length > 0 ? Math.max(...stamps) : null };
    },

    async byClient(sender, clientId) {
      const [row] = await select<Row>(BY_CLIENT_SQL, [sender, clientId]);
      return row ? toWire(row) : null;
    },

    async inspect(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new UnavailableError(`timed out after ${timeoutMs} ms`)), timeoutMs);
      });
      const notReady = (problem: StorageProblem, detail: string): StorageStatus => ({ isReady: false, problem, reason: describeStorageProblem(problem, where, detail) });
      // Not through select(): a failed check must not report itself as a failed query.
      const asked = (async () => {
        const [row] = await sequelize.query<{ has_messages: boolean; has_meta: boolean }>(SCHEMA_SQL, { type: QueryTypes.SELECT });
        if (!row?.has_messages || !row.has_meta) return { ...row, missing: [] };
        const applied = new Set((await sequelize.query<{ name: string }>(APPLIED_SQL, { type: QueryTypes.SELECT })).map((r) => r.name));
        return { ...row, missing: MIGRATIONS.filter((m) => !applied.has(m)) };
      })();
      asked.catch(() => undefined); // settles after a timeout too
      try {
        const row = await Promise.race([asked, timeout]);
        if (!row.has_messages) return notReady('no_schema', 'no table messages');
        if (!row.has_meta) return notReady('schema_behind', 'no record of applied migrations');
        if (row.missing.length) return notReady('schema_behind', `not applied: ${row.missing.join(', ')}`);
        return { isReady: true };
      } catch (err) {
        return notReady(storageProblemOf(err) ?? 'unreachable', errorMessage(err));
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
