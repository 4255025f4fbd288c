/**
 * A user's conversations, read from indexed tables only (never a scan of the
 * user's messages): the conversation list with exact unread counts, whom the
 * user shares a conversation with, and how far a conversation's positions
 * were handed out.
 *
 * The list is built from the user's direct conversations (conversation_positions,
 * by key) and current rooms (room_members); each one's newest stored message is
 * one backward step of the (conversation_id, position) index. `unread` counts
 * the stored messages of others above the user's read mark (for a room, above
 * where the user last joined it): an index range, so it is exact whatever
 * order messages were stored in. A room's marks are every current member's,
 * from where it last joined, as the list counts them.
 */
import type { Sequelize } from 'sequelize';
import { CONVERSATIONS_PER_PAGE, conversationKey, directConversation, type ConversationSummary, type MemberMarks } from '@simplechat/shared';
import { COLUMNS, EMPTY_ID_PREFIX, createSelect, toWire, type Row, type StorageProblem } from './store';

export interface Conversations {
  /** newest first (by the last message's ts), those whose last message is older than `before` */
  list(user: string, before: number | undefined, limit?: number): Promise<{ conversations: ConversationSummary[]; more: boolean }>;
  /** the users of `others` that share a conversation with `user`: a direct message either way, or a room both are in now */
  sharedWith(user: string, others: readonly string[]): Promise<string[]>;
  /** each current member's marks in a room, starting where it last joined; empty maps for no room */
  roomMarks(room: string): Promise<Omit<MemberMarks, 'room'>>;
  /** the highest position handed out in a conversation (at least its highest assigned one); 0 when none */
  reserved(conversation: string): Promise<number>;
  /** mutes the user's conversation until `until` (ms since the epoch); 0 unmutes */
  mute(user: string, conversation: string, until: number): Promise<void>;
}

export interface ConversationsDeps {
  sequelize: Sequelize;
  onFailure?(problem: StorageProblem): void;
}

// $1: the user; $2: the others; $3: the key of the direct conversation with each, in the same order.
// A direct conversation exists once a message was accepted in it (it reserved positions).
const SHARED_WITH_SQL = `
  SELECT o.user_id FROM unnest($2::text[], $3::text[]) AS o(user_id, conversation_id)
  WHERE EXISTS (SELECT 1 FROM conversation_positions p WHERE p.conversation_id = o.conversation_id)
     OR EXISTS (SELECT 1 FROM room_members mine JOIN room_members theirs ON theirs.room_id = mine.room_id
                WHERE mine.user_id = $1 AND mine.to_position IS NULL AND theirs.user_id = o.user_id AND theirs.to_position IS NULL)`;

// $1 user, $2 before (ms, or null), $3 limit. Direct conversations "a:b" of the user as a (key
// prefix) or b (second-user index), and its current rooms; each with its newest stored message.
const PAGE_SQL = `
  WITH mine AS (
    SELECT p.conversation_id, split_part(p.conversation_id, ':', 2) AS peer, NULL::text AS room, 0::int8 AS joined_at
      FROM conversation_positions p WHERE p.conversation_id >= $1 || ':' AND p.conversation_id < $1 || ';'
    UNION
    SELECT p.conversation_id, split_part(p.conversation_id, ':', 1), NULL, 0
      FROM conversation_positions p WHERE strpos(p.conversation_id, ':') > 0 AND (split_part(p.conversation_id, ':', 2)) COLLATE "C" = $1
    UNION ALL
    SELECT m.room_id, NULL, m.room_id, m.from_position FROM room_members m WHERE m.user_id = $1 AND m.to_position IS NULL
  )
  SELECT mine.conversation_id, mine.peer, mine.room, mine.joined_at::text AS joined_at, l.*
  FROM mine CROSS JOIN LATERAL (
    SELECT ${COLUMNS} FROM messages x
    WHERE x.conversation_id = mine.conversation_id AND left(x.id, 1) <> '${EMPTY_ID_PREFIX}'
    ORDER BY x.position DESC LIMIT 1
  ) l
  WHERE $2::int8 IS NULL OR l.ts::int8 < $2::int8
  ORDER BY l.ts::int8 DESC, mine.conversation_id
  LIMIT $3`;

// $1 user; $2.. the page's conversations, peers, rooms and joining positions. Marks of the user
// and of the other side; unread above the user's read mark. A room member's marks start where it
// (re)joined, so what it counts lies in its current membership interval.
const DETAILS_SQL = `
  SELECT c.conversation_id,
         COALESCE(me.read_up_to, 0)::text AS read, COALESCE(me.delivered_up_to, 0)::text AS delivered,
         COALESCE(peer.read_up_to, 0)::text AS peer_read, COALESCE(peer.delivered_up_to, 0)::text AS peer_delivered,
         (SELECT count(*) FROM messages u
          WHERE u.conversation_id = c.conversation_id AND u.position > GREATEST(COALESCE(me.read_up_to, 0), c.joined_at)
            AND u.sender <> $1 AND left(u.id, 1) <> '${EMPTY_ID_PREFIX}'
         )::text AS unread,
         EXISTS (SELECT 1 FROM mutes mu WHERE mu.conversation_id = c.conversation_id AND mu.user_id = $1 AND mu.until_ms > $6) AS muted
  FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[]) AS c(conversation_id, peer, room, joined_at)
  LEFT JOIN marks me ON me.conversation_id = c.conversation_id AND me.user_id = $1
  LEFT JOIN marks peer ON c.peer IS NOT NULL AND peer.conversation_id = c.conversation_id AND peer.user_id = c.peer`;

// $1 room. Its current members (the room_members_current_idx range) and their marks: a read
// mark counts as delivered.
const ROOM_MARKS_SQL = `
  SELECT m.user_id, GREATEST(COALESCE(k.read_up_to, 0), m.from_position)::text AS read,
         GREATEST(COALESCE(k.delivered_up_to, 0), COALESCE(k.read_up_to, 0), m.from_position)::text AS delivered
  FROM room_members m LEFT JOIN marks k ON k.conversation_id = m.room_id AND k.user_id = m.user_id
  WHERE m.room_id = $1 AND m.to_position IS NULL`;

const MUTE_SQL = `
  INSERT INTO mutes (conversation_id, user_id, until_ms) VALUES ($1, $2, $3)
  ON CONFLICT (conversation_id, user_id) DO UPDATE SET until_ms = excluded.until_ms`;
const UNMUTE_SQL = 'DELETE FROM mutes WHERE conversation_id = $1 AND user_id = $2';

const RESERVED_SQL = 'SELECT reserved::text AS reserved FROM conversation_positions WHERE conversation_id = $1';

interface PageRow extends Row {
  conversation_id: string;
  peer: string | null;
  room: string | null;
  joined_at: string;
}

interface DetailsRow {
  conversation_id: string;
  read: string;
  delivered: string;
  peer_read: string;
  peer_delivered: string;
  unread: string;
  muted: boolean;
}

export function createConversations(deps: ConversationsDeps): Conversations {
  const select = createSelect(deps.sequelize, deps.onFailure);
  return {
    async list(user, before, limit = CONVERSATIONS_PER_PAGE) {
      const rows = await select<PageRow>(PAGE_SQL, [user, before ?? null, limit + 1]);
      let more = rows.length > limit;
      let page = more ? rows.slice(0, limit) : rows;
      // The next page starts below the last ts shown: conversations sharing that ts with the
      // first one left out move to the next page, so paging by `before` skips none.
      if (more) {
        const cut = rows[limit]?.ts;
        const kept = page.filter((r) => r.ts !== cut);
        if (kept.length > 0) page = kept;
        else more = true;
      }
      if (page.length === 0) return { conversations: [], more: false };
      const details = await select<DetailsRow>(DETAILS_SQL, [user, page.map((r) => r.conversation_id), page.map((r) => r.peer), page.map((r) => r.room), page.map((r) => r.joined_at), Date.now()]);
      const byId = new Map(details.map((d) => [d.conversation_id, d]));
      const conversations = page.map((r): ConversationSummary => {
        const d = byId.get(r.conversation_id);
        const joined = Number(r.joined_at);
        const read = Math.max(Number(d?.read ?? 0), joined);
        const common = { last: toWire(r), unread: Number(d?.unread ?? 0), readUpTo: read, deliveredUpTo: Math.max(Number(d?.delivered ?? 0), read), muted: d?.muted === true };
        if (r.room !== null) return { room: r.room, ...common };
        const peerRead = Number(d?.peer_read ?? 0);
        return { with: r.peer as string, ...common, peerReadUpTo: peerRead, peerDeliveredUpTo: Math.max(Number(d?.peer_delivered ?? 0), peerRead) };
      });
      return { conversations, more };
    },
    async sharedWith(user, others) {
      if (others.length === 0) return [];
      const keys = others.map((o) => conversationKey(directConversation(user, o)));
      const rows = await select<{ user_id: string }>(SHARED_WITH_SQL, [user, others, keys]);
      return rows.map((r) => r.user_id);
    },
    async mute(user, conversation, until) {
      if (until > 0) await select(MUTE_SQL, [conversation, user, until]);
      else await select(UNMUTE_SQL, [conversation, user]);
    },
    async roomMarks(room) {
      const rows = await select<{ user_id: string; read: string; delivered: string }>(ROOM_MARKS_SQL, [room]);
      return { delivered: Object.fromEntries(rows.map((r) => [r.user_id, Number(r.delivered)])), read: Object.fromEntries(rows.map((r) => [r.user_id, Number(r.read)])) };
    },
    async reserved(conversation) {
      const [row] = await select<{ reserved: string }>(RESERVED_SQL, [conversation]);
      return row ? Number(row.reserved) : 0;
    },
  };
}
