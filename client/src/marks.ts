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
 *
 * A receipt has no answer, only an `error` when refused or not stored
 * (`unavailable`): each carries an id, and one the server could not store is
 * sent again, as are the marks sent shortly before a connection went away
 * (they may have been lost with it). Marks only move forward, so a copy
 * changes nothing.
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

/** A receipt sent and not known to have failed. */
interface Sent {
  c: Conversation;
  kind: ReceiptKind;
  upTo: number;
  at: number;
}

/** how long a sent receipt's id is kept for an error to name it (a store fails well within this) */
const SENT_KEPT_MS = 30_000;
/** a receipt the server could not store is sent again after this */
const RETRY_MS = 1_000;

export const keyOf = (ref: ConversationRef): string => ('room' in ref ? `room:${ref.room}` : `with:${ref.with}`);

export interface Marks {
  /** a message this client received (live, sync or history) */
  message(m: WireMessage): void;
  /** this client's own send was acked at `seq` */
  acked(ref: ConversationRef, seq: number): void;
  /** positions the server reported empty */
  empty(ref: ConversationRef, seqs: readonly number[]): void;
  /** the user's own marks, pushed from its other connections */
  own(ref: ConversationRef, kind: ReceiptKind, upTo: number): void;
  /** a line of the conversation list the application asked for: the user's marks there */
  listed(ref: ConversationRef, read: number, delivered: number): void;
  /** sends `read` up to what the client has (the conversation is on screen); returns the position sent, or undefined */
  markRead(ref: ConversationRef): number | undefined;
  /** the client's `delivered` and `read` positions of a conversation */
  of(ref: ConversationRef): { delivered: number; read: number };
  /** a (re)registration: floors are asked again */
  registered(): void;
  /** an `error` answered this id: true when it was a receipt's (sent again later when the server could not store it) */
  failed(id: string, code: string): boolean;
}

export function createMarks(deps: MarksDeps): Marks {
  const byKey = new Map<string, Conversation>();
  const toFlush = new Set<Conversation>();
  let flushTimer: ReturnType<typeof setTimeout> | undefined;
  let seeding: Promise<void> | undefined;
  let isSeedAgain = false;
  const sent = new Map<string, Sent>();
  let sentSeq = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** conversations whose read mark is to be sent again */
  const readAgain = new Set<Conversation>();

  /** Sends a receipt with an id an error can name; false when not connected. */
  function sendReceipt(c: Conversation, kind: ReceiptKind, upTo: number): boolean {
    const id = `rcpt-${++sentSeq}`;
    if (!deps.write({ type: 'receipt', id, kind, ...c.ref, upTo })) return false;
    const at = Date.now();
    sent.set(id, { c, kind, upTo, at });
    // ids are in send order: the oldest are first
    for (const [old, r] of sent) {
      if (at - r.at < SENT_KEPT_MS) break;
      sent.delete(old);
    }
    return true;
  }

  /** The conversation's state; one the client knew nothing of asks the list for its marks, unless `isKnown` (the list's own line). */
  function get(ref: ConversationRef, isKnown = false): Conversation {
    const key = keyOf(ref);
    let c = byKey.get(key);
    if (!c && isKnown) byKey.set(key, (c = { ref, delivered: new Positions(), read: new Positions(), isSeeded: true, sentDelivered: 0, sentRead: 0 }));
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
          // A conversation that got its first message while this list was asked is seeded by it too: its delivered goes now.
          const seeded = new Set(unseeded);
          for (const line of list) {
            const c = byKey.get(keyOf('room' in line ? { room: line.room } : { with: line.with }));
            if (!c) continue;
            raise(c, 'read', line.readUpTo);
            raise(c, 'delivered', line.deliveredUpTo);
            if (!c.isSeeded) seeded.add(c);
            c.isSeeded = true;
          }
          // Not in the list: no message of it is stored yet, so it starts at the beginning.
          for (const c of unseeded) c.isSeeded = true;
          schedule(seeded);
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
      if (upTo > c.sentDelivered && sendReceipt(c, 'delivered', upTo)) c.sentDelivered = upTo;
    }
    toFlush.clear();
  }

  function read(c: Conversation): number | undefined {
    const upTo = c.read.upTo;
    if (!c.isSeeded || upTo <= c.sentRead || !sendReceipt(c, 'read', upTo)) return undefined;
    c.sentRead = upTo;
    c.sentDelivered = Math.max(c.sentDelivered, upTo);
    return upTo;
  }

  function retry(): void {
    retryTimer = undefined;
    for (const c of readAgain) read(c);
    readAgain.clear();
    schedule(byKey.values());
  }

  /** A receipt that may not have been stored counts as not sent: it goes again (delivered at the next flush, read with the retry). */
  function unsend(r: { c: Conversation; kind: ReceiptKind; upTo: number }): void {
    // A later receipt of the same kind covers it.
    if (r.kind === 'delivered' && r.c.sentDelivered <= r.upTo) r.c.sentDelivered = r.upTo - 1;
    if (r.kind === 'read' && r.c.sentRead <= r.upTo) {
      r.c.sentRead = r.upTo - 1;
      r.c.sentDelivered = Math.min(r.c.sentDelivered, r.upTo - 1);
      readAgain.add(r.c);
    }
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
    listed(ref, readUpTo, deliveredUpTo) {
      const c = get(ref, true);
      raise(c, 'read', readUpTo);
      raise(c, 'delivered', deliveredUpTo);
      c.isSeeded = true;
      schedule([c]);
    },
    markRead: (ref) => read(get(ref)),
    of(ref) {
      const c = byKey.get(keyOf(ref));
      return { delivered: c?.delivered.upTo ?? 0, read: c?.read.upTo ?? 0 };
    },
    registered() {
      // Receipts sent shortly before the last connection went may have gone with it.
      for (const r of sent.values()) unsend(r);
      sent.clear();
      // Marks may have moved elsewhere meanwhile, and what was not sent goes now.
      if (byKey.size === 0) return;
      seed();
      retry();
    },
    failed(id, code) {
      const r = sent.get(id);
      if (!r) return false;
      sent.delete(id);
      // Refused for good (not a member any more, ...): nothing to send again.
      if (code !== 'unavailable' && code !== 'internal') return true;
      unsend(r);
      retryTimer ??= setTimeout(retry, RETRY_MS);
      return true;
    },
  };
}
