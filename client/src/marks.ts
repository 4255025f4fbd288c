/**
 * Receipts from the client's side (PROTOCOL.md "Receipts and conversations").
 * For each conversation the client keeps the positions it has (messages
 * received live, by sync or in history, its own sends' acks, and the
 * positions the server reported empty) and, from a floor, the highest
 * position below which it has no hole: what it may say it `delivered`. Its
 * `read` mark is the same computation from the user's read mark: what the
 * client has, above what the user has read anywhere.
 *
 * Floors come from the server: the user's marks in the conversation list
 * (`conversations`, asked once per registration and whenever a conversation
 * the client knows nothing of gets a message, since a room joined late or a
 * conversation older than what this client holds has positions it will never
 * receive), and the marks the user's other connections push. `delivered` is
 * sent on its own as messages arrive (once per conversation per flush);
 * `read` when the application says a conversation was shown.
 */
import type { ConversationSummary, ReceiptKind, WireMessage } from './wire.js';

/** A direct conversation (the other party) or a room. */
export type ConversationRef = { with: string } | { room: string };

export interface MarksDeps {
  /** the user this client is registered as (undefined before the first registration) */
  userId(): string | undefined;
  /** writes a frame on a registered connection; false when there is none */
  write(frame: object): boolean;
  /** the first page of the user's conversation list */
  conversations(): Promise<ConversationSummary[]>;
  /** send `delivered` as messages arrive */
  autoDelivered: boolean;
  /** how long arrivals are gathered before `delivered` goes out */
  flushMs: number;
}

/** Positions the client has above a floor, and the highest one below which nothing is missing. */
class Positions {
  private readonly above = new Set<number>();
  constructor(private floor = 0) {}

  get upTo(): number {
    return this.floor;
  }

  /** Raises the floor (a mark set elsewhere); returns whether the contiguous position moved. */
  raise(upTo: number): boolean {
    if (upTo <= this.floor) return false;
    this.floor = upTo;
    for (const p of this.above) if (p <= upTo) this.above.delete(p);
    this.advance();
    return true;
  }

  add(position: number): boolean {
    if (position <= this.floor) return false;
    this.above.add(position);
    return this.advance();
  }

  private advance(): boolean {
    const before = this.floor;
    while (this.above.delete(this.floor + 1)) this.floor++;
    return this.floor > before;
  }
}

interface Conversation {
  ref: ConversationRef;
  /** what the client has above the user's delivered (and read) mark */
  delivered: Positions;
  /** what the client has above the user's read mark */
  read: Positions;
  /** the floors are known (the conversation list answered, or it was new) */
  isSeeded: boolean;
  /** the last marks sent or learned, so that nothing is sent twice */
  sentDelivered: number;
  sentRead: number;
}

export const keyOf = (ref: ConversationRef): string => ('room' in ref ? `room:${ref.room}` : `with:${ref.with}`);

export interface Marks {
  /** a message this client received (live, sync or history) */
  message(m: WireMessage): void;
  /** this client's own send was acked at `seq` */
  acked(ref: ConversationRef, seq: number): void;
  /** positions the server reported empty */
  empty(ref: ConversationRef, seqs: readonly number[]): void;
  /** the user's own marks, pushed from its other connections or read in the conversation list */
  own(ref: ConversationRef, kind: ReceiptKind, upTo: number): void;
  /** sends `read` up to what the client has (the conversation is on screen); returns the position sent, or undefined */
  markRead(ref: ConversationRef): number | undefined;
  /** the client's `delivered` and `read` positions of a conversation */
  of(ref: ConversationRef): { delivered: number; read: number };
  /** a (re)registration: floors are asked again */
  registered(): void;
}

export function createMarks(deps: MarksDeps): Marks {
  const byKey = new Map<string, Conversation>();
  const toFlush = new Set<Conversation>();
  let flushTimer: ReturnType<typeof setTimeout> | undefined;
  let seeding: Promise<void> | undefined;
  let isSeedAgain = false;

  function get(ref: ConversationRef): Conversation {
    const key = keyOf(ref);
    let c = byKey.get(key);
    if (!c) {
      byKey.set(key, (c = { ref, delivered: new Positions(), read: new Positions(), isSeeded: false, sentDelivered: 0, sentRead: 0 }));
      seed();
    }
    return c;
  }

  function refOf(m: WireMessage): ConversationRef | undefined {
    if (m.room !== undefined) return { room: m.room };
    const me = deps.userId();
    if (me === undefined) return undefined;
    return { with: m.from === me ? (m.to as string) : m.from };
  }

  /** Asks the conversation list for the user's marks (coalesced: one request at a time, once more if asked meanwhile). */
  function seed(): void {
    if (seeding) {
      isSeedAgain = true;
      return;
    }
    const unseeded = [...byKey.values()].filter((c) => !c.isSeeded);
    seeding = deps
      .conversations()
      .then(
        (list) => {
          for (const line of list) {
            const c = byKey.get(keyOf('room' in line ? { room: line.room } : { with: line.with }));
            if (!c) continue;
            raise(c, 'read', line.readUpTo);
            raise(c, 'delivered', line.deliveredUpTo);
            c.isSeeded = true;
          }
          // Not in the list: no message of it is stored yet, so it starts at the beginning.
          for (const c of unseeded) c.isSeeded = true;
          schedule(unseeded);
        },
        () => {
          // Not connected, or the list could not be read: the next registration asks again.
        },
      )
      .finally(() => {
        seeding = undefined;
        if (isSeedAgain) {
          isSeedAgain = false;
          seed();
        }
      });
  }

  function raise(c: Conversation, kind: ReceiptKind, upTo: number): void {
    c.delivered.raise(upTo);
    c.sentDelivered = Math.max(c.sentDelivered, upTo);
    if (kind === 'read') {
      c.read.raise(upTo);
      c.sentRead = Math.max(c.sentRead, upTo);
    }
  }

  function schedule(cs: Iterable<Conversation>): void {
    if (!deps.autoDelivered) return;
    for (const c of cs) if (c.isSeeded && c.delivered.upTo > c.sentDelivered) toFlush.add(c);
    if (toFlush.size > 0) flushTimer ??= setTimeout(flush, deps.flushMs);
  }

  function flush(): void {
    flushTimer = undefined;
    for (const c of toFlush) {
      const upTo = c.delivered.upTo;
      if (upTo > c.sentDelivered && deps.write({ type: 'receipt', kind: 'delivered', ...c.ref, upTo })) c.sentDelivered = upTo;
    }
    toFlush.clear();
  }

  function added(c: Conversation, position: number): void {
    c.read.add(position);
    if (c.delivered.add(position)) schedule([c]);
  }

  return {
    message(m) {
      const ref = refOf(m);
      if (ref) added(get(ref), m.seq);
    },
    acked(ref, seq) {
      added(get(ref), seq);
    },
    empty(ref, seqs) {
      const c = get(ref);
      for (const s of seqs) added(c, s);
    },
    own(ref, kind, upTo) {
      raise(get(ref), kind, upTo);
    },
    markRead(ref) {
      const c = get(ref);
      const upTo = c.read.upTo;
      if (!c.isSeeded || upTo <= c.sentRead || !deps.write({ type: 'receipt', kind: 'read', ...ref, upTo })) return undefined;
      c.sentRead = upTo;
      c.sentDelivered = Math.max(c.sentDelivered, upTo);
      return upTo;
    },
    of(ref) {
      const c = byKey.get(keyOf(ref));
      return { delivered: c?.delivered.upTo ?? 0, read: c?.read.upTo ?? 0 };
    },
    registered() {
      // Marks may have moved elsewhere meanwhile, and what was not sent goes now.
      if (byKey.size === 0) return;
      seed();
      schedule(byKey.values());
    },
  };
}
