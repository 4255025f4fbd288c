/**
 * The unread books of one scenario: once it settled, every user's
 * `conversations` answer is checked against what storage holds, computed here
 * from the rows themselves:
 *   - the conversations listed are the user's direct conversations with a
 *     stored message and its rooms (with one);
 *   - each one's `readUpTo` is the user's stored read mark (for a room, at
 *     least where it joined);
 *   - `unread` is the number of stored messages of others above that mark
 *     (empty-position markers are not messages).
 * Receipts sent during the fault moved those marks; the books balance only if
 * the count the server answers is exact after it.
 */
import { ProtocolSocket } from '@simplechat/shared';
import type { Cluster } from './cluster';

export interface UnreadBooks {
  users: number;
  conversations: number;
  /** conversations whose unread or read mark differ from storage's, or that are missing or extra */
  wrong: number;
  /** read marks above 0: the receipts that reached storage */
  marked: number;
  details: string[];
}

interface MessageRow extends Record<string, unknown> {
  id: string;
  sender: string;
  recipient: string | null;
  room_id: string | null;
  conversation_id: string;
  position: number;
}

interface Line {
  with?: string;
  room?: string;
  unread: number;
  readUpTo: number;
}

/** A registered connection of the user to the first instance that takes one (a scenario may have killed some). */
async function connectAny(cluster: Cluster, user: string): Promise<ProtocolSocket> {
  let last: unknown;
  for (const url of cluster.wsUrls) {
    try {
      const s = await ProtocolSocket.open(url);
      if ((await s.register(await cluster.token(user))).type === 'registered') return s;
      s.close();
    } catch (err) {
      last = err;
    }
  }
  throw new Error(`no instance took a connection for ${user}: ${String(last)}`);
}

/** Every page of one user's conversation list, through a connection of its own. */
async function listOf(cluster: Cluster, user: string): Promise<Line[]> {
  const s = await connectAny(cluster, user);
  try {
    const lines: Line[] = [];
    let before: number | undefined;
    for (;;) {
      const page = await s.request({ type: 'conversations', ...(before === undefined ? {} : { before }) });
      if (page.type !== 'conversations') throw new Error(`conversations answered ${JSON.stringify(page)}`);
      const list = page.conversations as (Line & { last: { ts: number } })[];
      lines.push(...list);
      if (!page.more || list.length === 0) return lines;
      before = list.at(-1)?.last.ts;
    }
  } finally {
    s.close();
  }
}

type MarkRow = { conversation_id: string; user_id: string; read: number };
const readMarks = (cluster: Cluster) => cluster.query<MarkRow>('SELECT conversation_id, user_id, read_up_to::int AS read FROM marks ORDER BY conversation_id, user_id');

/**
 * Every user's list, and storage's read marks as they were while the lists were read: a receipt
 * still on its way (a client sends one again after a fault) may land meanwhile, so the lists are
 * read again until the marks held still around them.
 */
async function listsWithMarks(cluster: Cluster, users: readonly string[]): Promise<{ lists: Map<string, Line[]>; marks: MarkRow[] }> {
  for (let attempt = 0; ; attempt++) {
    const before = await readMarks(cluster);
    const lists = new Map<string, Line[]>();
    for (const user of users) lists.set(user, await listOf(cluster, user));
    const after = await readMarks(cluster);
    if (JSON.stringify(before) === JSON.stringify(after) || attempt >= 10) return { lists, marks: after };
    await new Promise((r) => setTimeout(r, 500));
  }
}

export async function checkUnread(cluster: Cluster, users: readonly string[]): Promise<UnreadBooks> {
  const { lists, marks } = await listsWithMarks(cluster, users);
  const rows = await cluster.query<MessageRow>("SELECT id, sender, recipient, room_id, conversation_id, position::int AS position FROM messages WHERE left(id, 1) <> '~'");
  const members = await cluster.query<{ room_id: string; user_id: string; joined: number }>('SELECT room_id, user_id, from_position::int AS joined FROM room_members WHERE to_position IS NULL');
  const readOf = new Map(marks.map((m) => [`${m.conversation_id}\n${m.user_id}`, m.read]));
  const books: UnreadBooks = { users: users.length, conversations: 0, wrong: 0, marked: marks.filter((m) => m.read > 0).length, details: [] };
  const wrong = (detail: string) => {
    books.wrong++;
    if (books.details.length < 20) books.details.push(detail);
  };
  for (const user of users) {
    // What storage says the list must be: conversation key -> the line's name and the read mark.
    const expected = new Map<string, { name: string; read: number }>();
    for (const r of rows) {
      if (r.room_id === null && (r.sender === user || r.recipient === user)) {
        const other = r.sender === user ? (r.recipient as string) : r.sender;
        expected.set(r.conversation_id, { name: `with ${other}`, read: readOf.get(`${r.conversation_id}\n${user}`) ?? 0 });
      }
    }
    for (const m of members) {
      if (m.user_id !== user || !rows.some((r) => r.conversation_id === m.room_id)) continue;
      expected.set(m.room_id, { name: `room ${m.room_id}`, read: Math.max(readOf.get(`${m.room_id}\n${user}`) ?? 0, m.joined) });
    }
    const listed = lists.get(user) ?? [];
    books.conversations += listed.length;
    const seen = new Set<string>();
    for (const line of listed) {
      const key = line.room ?? [user, line.with as string].sort().join(':');
      seen.add(key);
      const want = expected.get(key);
      if (!want) {
        wrong(`${user}: lists ${line.room ? `room ${line.room}` : `with ${line.with}`}, which storage does not have`);
        continue;
      }
      const unread = rows.filter((r) => r.conversation_id === key && r.sender !== user && r.position > want.read).length;
      if (line.readUpTo !== want.read || line.unread !== unread) wrong(`${user} ${want.name}: answered unread ${line.unread} above ${line.readUpTo}, storage has ${unread} above ${want.read}`);
    }
    for (const [key, want] of expected) if (!seen.has(key)) wrong(`${user}: ${want.name} (${key}) is not listed`);
  }
  return books;
}
