/**
 * The conversation list as the server keeps it, and the marks around it:
 * unread counts, mutes, this user's read marks and the other side's
 * delivered and read marks (the ticks on this user's messages). No DOM, no
 * socket: the session feeds it the `conversations` answers, the reads this
 * page sent and the `receipt` events; the page asks it what to draw.
 *
 * Unread counts come from the server (`unread`: stored messages of others
 * above the read mark). Between two answers the count is adjusted with what
 * this page holds: messages of others that arrived since (above the line's
 * last position) and are not read are added, messages the server counted
 * that this user has read since are taken off. A read mark set elsewhere
 * that covers the whole line leaves only what arrived above it. The next
 * answer replaces the adjustment; `isBehind` says when an answer does not
 * reflect a read yet (marks are stored through the broker), so that the list
 * is asked again.
 *
 * Ticks: in a direct conversation a message of this user is delivered once
 * the peer's delivered (or read) mark covers its position, read once the
 * peer's read mark does. In a room it is delivered once any other member's
 * mark covers it and read once every other member's read mark does; the
 * label counts them ("Read by 2 of 3"). The peer's marks of a direct
 * conversation come with the `conversations` answer, a room's members' with
 * `room.marks` when the room opens; both move with the `receipt` frames pushed
 * while the page is open.
 */
import { roomKey, roomOfKey, type ChatMessage, type ChatStore } from './store.js';
import type { ConversationSummary, MemberMarks, ReceiptEvent } from './esm/index.js';

export type Receipt = 'sent' | 'delivered' | 'read';

export interface Tick {
  state: Receipt;
  /** what the tick means, for a tooltip and screen readers */
  label: string;
}

interface Marks {
  delivered: number;
  read: number;
}

export type ConversationBook = ReturnType<typeof createConversationBook>;

export function createConversationBook(store: ChatStore) {
  const me = store.me;
  /** the last `conversations` answer, by conversation key */
  const lines = new Map<string, ConversationSummary>();
  /** this user's read mark per conversation: the list's, the ones this page sent, the ones its other connections pushed */
  const myRead = new Map<string, number>();
  /** the others' marks per conversation, by user */
  const theirs = new Map<string, Map<string, Marks>>();
  /** mutes changed from this page since the last answer */
  const muted = new Map<string, boolean>();

  function keyOfLine(line: ConversationSummary): string {
    return 'room' in line ? roomKey(line.room) : line.with;
  }

  function raiseMine(key: string, upTo: number): boolean {
    if (upTo <= (myRead.get(key) ?? 0)) return false;
    myRead.set(key, upTo);
    return true;
  }

  function raiseTheirs(key: string, user: string, kind: 'delivered' | 'read', upTo: number): void {
    let byUser = theirs.get(key);
    if (!byUser) theirs.set(key, (byUser = new Map()));
    const m = byUser.get(user) ?? { delivered: 0, read: 0 };
    m[kind] = Math.max(m[kind], upTo);
    // A read mark counts as delivered.
    m.delivered = Math.max(m.delivered, m.read);
    byUser.set(user, m);
  }

  function readMark(key: string): number {
    return myRead.get(key) ?? 0;
  }

  return {
    /** A `conversations` answer: returns the keys it lists, newest first. */
    setLines(list: readonly ConversationSummary[]): string[] {
      const keys: string[] = [];
      for (const line of list) {
        const key = keyOfLine(line);
        keys.push(key);
        lines.set(key, line);
        muted.delete(key);
        raiseMine(key, line.readUpTo);
        if ('with' in line) {
          raiseTheirs(key, line.with, 'delivered', line.peerDeliveredUpTo ?? 0);
          raiseTheirs(key, line.with, 'read', line.peerReadUpTo ?? 0);
        }
      }
      return keys;
    },

    /** This page sent `read` up to `upTo`. */
    read: (key: string, upTo: number): boolean => raiseMine(key, upTo),

    /** A pushed receipt; returns whether it moved this user's own read mark (read on another connection). */
    receipt(r: ReceiptEvent, key: string): boolean {
      let isMine = false;
      for (const [user, upTo] of Object.entries(r.marks)) {
        if (user !== me) raiseTheirs(key, user, r.kind, upTo);
        else if (r.kind === 'read') isMine = raiseMine(key, upTo) || isMine;
      }
      return isMine;
    },

    /** A room's marks as the server has them (`room.marks`). */
    memberMarks(key: string, marks: MemberMarks): void {
      for (const kind of ['delivered', 'read'] as const) {
        for (const [user, upTo] of Object.entries(marks[kind])) if (user !== me) raiseTheirs(key, user, kind, upTo);
      }
    },

    readMark,

    /** Stored messages of others this user has not read, as the server counts them, kept current between answers. */
    unread(key: string): number {
      const line = lines.get(key);
      const mine = readMark(key);
      const baseRead = line?.readUpTo ?? 0;
      const baseLast = line?.last.seq ?? 0;
      const held = store.positionsFromOthers(key);
      // Everything the server counted is read: only what came above the read mark is left.
      if (mine >= baseLast) return held.filter((p) => p > mine).length;
      let n = line?.unread ?? 0;
      for (const p of held) {
        if (p > baseRead && p <= mine) n--;
        else if (p > baseLast) n++;
      }
      return Math.max(0, n);
    },

    /** Some answer does not count a read this page knows of yet: ask the list again. */
    isBehind(): boolean {
      for (const [key, line] of lines) if (line.unread > 0 && readMark(key) > line.readUpTo) return true;
      return false;
    },

    isMuted: (key: string): boolean => muted.get(key) ?? lines.get(key)?.muted ?? false,

    setMuted(key: string, isMuted: boolean): void {
      muted.set(key, isMuted);
    },

    /** The receipt state of one of this user's messages; undefined for others' messages and unacked ones. */
    tick(m: ChatMessage, key: string): Tick | undefined {
      if (m.from !== me || m.seq === undefined || m.state !== 'sent') return undefined;
      const seq = m.seq;
      const byUser = theirs.get(key);
      const room = roomOfKey(key);
      if (room === undefined) {
        const peer = byUser?.get(key);
        if (peer && peer.read >= seq) return { state: 'read', label: 'Read' };
        if (peer && peer.delivered >= seq) return { state: 'delivered', label: 'Delivered' };
        return { state: 'sent', label: 'Sent' };
      }
      const members = store.room(room)?.members;
      const others = (members ?? [...(byUser?.keys() ?? [])]).filter((u) => u !== me);
      let delivered = 0;
      let read = 0;
      for (const u of others) {
        const marks = byUser?.get(u);
        if (marks && marks.delivered >= seq) delivered++;
        if (marks && marks.read >= seq) read++;
      }
      const of = members !== undefined ? ` of ${others.length}` : '';
      if (others.length > 0 && read === others.length) return { state: 'read', label: `Read by ${read}${of}` };
      if (delivered > 0) return { state: 'delivered', label: `Delivered to ${delivered}${of}${read > 0 ? `, read by ${read}` : ''}` };
      return { state: 'sent', label: 'Sent' };
    },
  };
}
