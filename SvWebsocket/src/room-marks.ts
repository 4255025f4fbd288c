/**
 * Room receipts as members' connections get them: coalesced per room and
 * kind on each instance into at most one frame per second carrying the newest
 * mark of each reader (PROTOCOL.md "Receipts and conversations"). Every
 * connection of a room's members on this instance gets the same frames at the
 * same time, so coalescing per instance is coalescing per connection. A mark
 * travels to the other instances as a one-reader frame of the same shape,
 * which their peer-link server hands here (inbound) instead of to the
 * connections.
 */
import type { ReceiptKind, ServerFrame } from '@simplechat/shared';
import type { ConnectionRegistry } from './connections';

const INTERVAL_MS = 1000;
const SWEEP_MS = 10_000;
/** how a room receipt frame starts (serialised with its fields in this order); a direct one has `by` there */
const ROOM_MARKS_PREFIXES = ['delivered', 'read'].map((kind) => `{"type":"receipt","kind":"${kind}","room":`);

export interface RoomMarks {
  /** marks of readers in a room, for those of `members` connected here */
  add(room: string, kind: ReceiptKind, marks: Record<string, number>, members: readonly string[]): void;
  /** a frame received from a peer: true when it was a room mark, taken here */
  inbound(users: readonly string[], frame: string): boolean;
  close(): void;
}

/** A room receipt frame with the marks of one reader, as instances pass them on. */
export function roomMarkFrame(room: string, kind: ReceiptKind, user: string, upTo: number, ts: number): string {
  return JSON.stringify({ type: 'receipt', kind, room, marks: { [user]: upTo }, ts } satisfies ServerFrame);
}

interface Pending {
  room: string;
  kind: ReceiptKind;
  marks: Record<string, number>;
  users: Set<string>;
  timer: NodeJS.Timeout | undefined;
  lastSentAt: number;
}

export function createRoomMarks(registry: Pick<ConnectionRegistry, 'deliver'>, now: () => number = Date.now): RoomMarks {
  const byRoomKind = new Map<string, Pending>();

  /** Sends what waits, or waits for the rest of the second since the last frame (timers may fire a millisecond early). */
  function flushOrWait(p: Pending): void {
    p.timer = undefined;
    const wait = p.lastSentAt + INTERVAL_MS - now();
    if (wait > 0) p.timer = setTimeout(() => flushOrWait(p), wait);
    else flush(p);
  }

  function flush(p: Pending): void {
    if (p.users.size === 0) return;
    p.lastSentAt = now();
    const frame = JSON.stringify({ type: 'receipt', kind: p.kind, room: p.room, marks: p.marks, ts: p.lastSentAt } satisfies ServerFrame);
    const users = [...p.users];
    p.marks = {};
    p.users.clear();
    registry.deliver(users, frame);
  }

  function add(room: string, kind: ReceiptKind, marks: Record<string, number>, members: readonly string[]): void {
    const key = `${room}\n${kind}`;
    let p = byRoomKind.get(key);
    if (!p) byRoomKind.set(key, (p = { room, kind, marks: {}, users: new Set(), timer: undefined, lastSentAt: 0 }));
    for (const [user, upTo] of Object.entries(marks)) p.marks[user] = Math.max(p.marks[user] ?? 0, upTo);
    for (const u of members) p.users.add(u);
    if (!p.timer) flushOrWait(p);
  }

  const sweeper = setInterval(() => {
    const t = now();
    for (const [key, p] of byRoomKind) if (!p.timer && t - p.lastSentAt >= INTERVAL_MS) byRoomKind.delete(key);
  }, SWEEP_MS);
  sweeper.unref();

  return {
    add,
    inbound(users, frame) {
      // Only room marks are parsed: every other frame a peer forwards passes on untouched.
      if (!ROOM_MARKS_PREFIXES.some((prefix) => frame.startsWith(prefix))) return false;
      const f = JSON.parse(frame) as { kind: ReceiptKind; room: string; marks: Record<string, number> };
      add(f.room, f.kind, f.marks, users);
      return true;
    },
    close() {
      clearInterval(sweeper);
      for (const p of byRoomKind.values()) if (p.timer) clearTimeout(p.timer);
      byRoomKind.clear();
    },
  };
}
