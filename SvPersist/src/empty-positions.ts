/**
 * Reports empty positions (PROTOCOL.md "Positions"): a position below a stored
 * message of its conversation with no message of its own, once that later
 * message was accepted EMPTY_AFTER_MS ago. Positions are handed out in
 * acceptance order, so the missing message was accepted earlier still: its
 * send was never confirmed, or its position was skipped (a block of positions
 * left unused when Redis forgot its counters). Storage marks it empty (a row
 * store.ts tells apart) in storage order, so `sync` reports it in the range it
 * covers, and refuses a message there from then on (store.ts gives a late one
 * a new position).
 *
 * Each scan reads the messages accepted since the last one up to EMPTY_AFTER_MS
 * ago, by msgId (a ULID: its first ten characters are its time), and looks for
 * holes below each conversation's newest of them. Several SvPersist instances
 * may scan at once: a position is marked once.
 */
import { QueryTypes, type Sequelize } from 'sequelize';
import { errorMessage, type Logger } from '@simplechat/shared';
import { EMPTY_ID_PREFIX, SEQ_LOCK_KEY } from './store';

export interface EmptyPositionsDeps {
  sequelize: Sequelize;
  emptyAfterMs: number;
  /** how often to scan */
  intervalMs: number;
  log: Logger;
  now?: () => number;
}

export interface EmptyPositionScanner {
  /** one scan; resolves with the positions marked empty */
  scan(): Promise<number>;
  close(): Promise<void>;
}

/** positions below a conversation's newest looked at in one scan */
const WINDOW = 10_000;
/** how far back the first scan after a start reads */
const FIRST_SCAN_BACK_MS = 10 * 60_000;
const B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** The smallest ULID of a millisecond: msgIds accepted before `ms` sort below it. */
export function ulidFloor(ms: number): string {
  let t = Math.max(0, Math.floor(ms));
  let out = '';
  for (let i = 0; i < 10; i++) {
    out = (B32[t % 32] as string) + out;
    t = Math.floor(t / 32);
  }
  return `${out}0000000000000000`;
}

// $1, $2: msgIds bounding the slice (after, up to); $3 the window. The seq lock orders the marks
// with the batches, so a sync cursor never passes a mark committed later.
const SCAN_SQL = `
  WITH seq_lock AS MATERIALIZED (SELECT pg_advisory_xact_lock(${SEQ_LOCK_KEY})),
  slice AS (
    SELECT conversation_id, max(position) AS top FROM messages
    WHERE id > $1 AND id <= $2 GROUP BY conversation_id
  ),
  holes AS (
    SELECT s.conversation_id, g.position
    FROM slice s
    CROSS JOIN LATERAL (
      SELECT m.position, lag(m.position) OVER (ORDER BY m.position) AS prev
      FROM messages m WHERE m.conversation_id = s.conversation_id AND m.position <= s.top AND m.position > greatest(s.top - $3, 0)
    ) w
    CROSS JOIN LATERAL generate_series(coalesce(w.prev, CASE WHEN s.top <= $3 THEN 0 ELSE w.position - 1 END) + 1, w.position - 1) AS g(position)
  ),
  marked AS (
    INSERT INTO messages (id, seq, sender, recipient, room_id, conversation_id, position, client_id, body, created_at)
    SELECT '${EMPTY_ID_PREFIX}' || s.seq, s.seq, s.sender, s.recipient, s.room_id, s.conversation_id, s.position, '${EMPTY_ID_PREFIX}' || s.seq, '', now()
    FROM (
      -- a direct conversation's key is "a:b" (user ids hold no ':'); a room's is its id
      SELECT nextval('messages_seq') AS seq, h.conversation_id, h.position,
             CASE WHEN is_direct THEN NULL ELSE h.conversation_id END AS room_id,
             CASE WHEN is_direct THEN split_part(h.conversation_id, ':', 1) ELSE '' END AS sender,
             CASE WHEN is_direct THEN split_part(h.conversation_id, ':', 2) END AS recipient
      FROM seq_lock, holes h, LATERAL (SELECT strpos(h.conversation_id, ':') > 0 AS is_direct) k
    ) s
    ON CONFLICT DO NOTHING
    RETURNING 1
  )
  SELECT count(*)::int AS marked FROM marked`;

export function createEmptyPositions(deps: EmptyPositionsDeps): EmptyPositionScanner {
  const log = deps.log.child({ component: 'empty-positions' });
  const clock = deps.now ?? Date.now;
  let after = ulidFloor(clock() - deps.emptyAfterMs - FIRST_SCAN_BACK_MS);
  let running: Promise<number> | undefined;
  let isClosed = false;

  async function scanOnce(): Promise<number> {
    const upTo = ulidFloor(clock() - deps.emptyAfterMs);
    if (upTo <= after) return 0;
    const [row] = await deps.sequelize.query<{ marked: number }>(SCAN_SQL, { bind: [after, upTo, WINDOW], type: QueryTypes.SELECT });
    after = upTo;
    const marked = row?.marked ?? 0;
    if (marked > 0) log.info({ marked }, 'positions reported empty (their messages were never stored)');
    return marked;
  }

  function scan(): Promise<number> {
    running ??= scanOnce().finally(() => (running = undefined));
    return running;
  }

  const timer = setInterval(() => {
    if (isClosed) return;
    scan().catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'empty positions not scanned (storage unavailable); the next scan covers this one'));
  }, deps.intervalMs);
  timer.unref();

  return {
    scan,
    async close() {
      isClosed = true;
      clearInterval(timer);
      await running?.catch(() => undefined);
    },
  };
}
