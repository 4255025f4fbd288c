/**
 * Conversations and messages of one signed-in user, without DOM or socket.
 * Every msgId is kept once (live, history, sync and acks all merge here), and
 * each conversation is ordered by msgId (ULIDs: string order is time order),
 * with messages still waiting for their ack last, in the order they were typed.
 */
import type { OutboxEntry } from './persist.js';
import type { WireMessage } from './wire.js';

export type MsgState = 'sending' | 'sent' | 'failed' | 'received';

export interface ChatMessage {
  /** Client id of a message sent from this page (its idempotency key). */
  cid?: string;
  msgId?: string;
  from: string;
  to: string;
  body: string;
  /** Server time; absent until acked. */
  ts?: number;
  createdAt: number;
  state: MsgState;
  error?: string;
  /** failed: sending it again could succeed (the server's own fault), so Retry is offered */
  retryable?: boolean;
}

export interface Conversation {
  peer: string;
  messages: ChatMessage[];
  history: 'none' | 'loading' | 'loaded';
  /** The last history page said `more`: older messages can be loaded. */
  hasOlder: boolean;
}

export interface ConversationSummary {
  peer: string;
  unread: number;
  last?: ChatMessage;
  lastAt: number;
}

export interface ChatStoreDeps {
  me: string;
  /** Mutated in place; owned by the persisted user state. */
  readUpTo: Record<string, string>;
  peers: Record<string, number>;
  onChange: () => void;
}

export type ChatStore = ReturnType<typeof createChatStore>;

function compare(a: ChatMessage, b: ChatMessage): number {
  if (a.msgId !== undefined && b.msgId !== undefined) return a.msgId < b.msgId ? -1 : a.msgId > b.msgId ? 1 : 0;
  if (a.msgId !== undefined) return -1;
  if (b.msgId !== undefined) return 1;
  return a.createdAt - b.createdAt;
}

export function createChatStore(deps: ChatStoreDeps) {
  const { me, readUpTo, peers, onChange } = deps;
  const conversations = new Map<string, Conversation>();
  const byMsgId = new Map<string, ChatMessage>();
  const byCid = new Map<string, ChatMessage>();

  function conversation(peer: string): Conversation {
    let c = conversations.get(peer);
    if (!c) {
      c = { peer, messages: [], history: 'none', hasOlder: false };
      conversations.set(peer, c);
    }
    return c;
  }

  function peerOf(m: { from: string; to: string }): string {
    return m.from === me ? m.to : m.from;
  }

  function touch(peer: string, at: number): void {
    if ((peers[peer] ?? 0) < at) peers[peer] = at;
  }

  function sort(c: Conversation): void {
    c.messages.sort(compare);
  }

  /** Adds the messages not seen yet; returns how many were new. */
  function merge(list: readonly WireMessage[]): number {
    const touched = new Set<Conversation>();
    for (const w of list) {
      if (byMsgId.has(w.msgId)) continue;
      if (w.to === undefined || (w.from !== me && w.to !== me)) continue;
      const m: ChatMessage = {
        msgId: w.msgId,
        from: w.from,
        to: w.to,
        body: w.body,
        ts: w.ts,
        createdAt: w.ts,
        state: w.from === me ? 'sent' : 'received',
      };
      const c = conversation(peerOf(m));
      c.messages.push(m);
      byMsgId.set(w.msgId, m);
      touch(c.peer, w.ts);
      touched.add(c);
    }
    for (const c of touched) sort(c);
    if (touched.size > 0) onChange();
    return touched.size;
  }

  function addPending(e: OutboxEntry): ChatMessage {
    const existing = byCid.get(e.cid);
    if (existing) return existing;
    const m: ChatMessage = { cid: e.cid, from: me, to: e.to, body: e.body, createdAt: e.createdAt, state: 'sending' };
    const c = conversation(e.to);
    c.messages.push(m);
    byCid.set(e.cid, m);
    touch(e.to, e.createdAt);
    sort(c);
    onChange();
    return m;
  }

  function remove(m: ChatMessage): void {
    const c = conversations.get(peerOf(m));
    if (!c) return;
    const i = c.messages.indexOf(m);
    if (i >= 0) c.messages.splice(i, 1);
  }

  /** The ack of a pending send. Returns false when the client id is unknown (already acked). */
  function ack(cid: string, msgId: string, ts: number): boolean {
    const m = byCid.get(cid);
    if (!m) return false;
    byCid.delete(cid);
    const seen = byMsgId.get(msgId);
    if (seen && seen !== m) {
      // Already shown: our own message came back live or through sync before the ack.
      remove(m);
    } else {
      m.msgId = msgId;
      m.ts = ts;
      m.state = 'sent';
      m.error = undefined;
      byMsgId.set(msgId, m);
      sort(conversation(peerOf(m)));
      touch(peerOf(m), ts);
    }
    onChange();
    return true;
  }

  function fail(cid: string, error: string, retryable: boolean): void {
    const m = byCid.get(cid);
    if (!m || m.state !== 'sending') return;
    m.state = 'failed';
    m.error = error;
    m.retryable = retryable;
    onChange();
  }

  function retry(cid: string): ChatMessage | undefined {
    const m = byCid.get(cid);
    if (!m || m.state !== 'failed') return undefined;
    m.state = 'sending';
    m.error = undefined;
    m.retryable = undefined;
    onChange();
    return m;
  }

  function pending(): ChatMessage[] {
    return [...byCid.values()].filter((m) => m.state === 'sending').sort((a, b) => a.createdAt - b.createdAt);
  }

  function pendingMessage(cid: string): ChatMessage | undefined {
    const m = byCid.get(cid);
    return m?.state === 'sending' ? m : undefined;
  }

  function unread(peer: string): number {
    const c = conversations.get(peer);
    if (!c) return 0;
    const upTo = readUpTo[peer] ?? '';
    let n = 0;
    for (const m of c.messages) if (m.state === 'received' && m.msgId !== undefined && m.msgId > upTo) n++;
    return n;
  }

  function markRead(peer: string): void {
    const c = conversations.get(peer);
    if (!c) return;
    let max = readUpTo[peer] ?? '';
    for (const m of c.messages) if (m.state === 'received' && m.msgId !== undefined && m.msgId > max) max = m.msgId;
    if (max !== '' && max !== readUpTo[peer]) {
      readUpTo[peer] = max;
      onChange();
    }
  }

  function summaries(current: string | undefined): ConversationSummary[] {
    const names = new Set<string>(Object.keys(peers));
    for (const c of conversations.values()) if (c.messages.length > 0) names.add(c.peer);
    if (current) names.add(current);
    const out: ConversationSummary[] = [];
    for (const peer of names) {
      const c = conversations.get(peer);
      const last = c?.messages[c.messages.length - 1];
      out.push({ peer, unread: unread(peer), last, lastAt: Math.max(peers[peer] ?? 0, last?.ts ?? last?.createdAt ?? 0) });
    }
    return out.sort((a, b) => b.lastAt - a.lastAt || a.peer.localeCompare(b.peer));
  }

  function setHistory(peer: string, history: Conversation['history'], hasOlder?: boolean): void {
    const c = conversation(peer);
    c.history = history;
    if (hasOlder !== undefined) c.hasOlder = hasOlder;
    onChange();
  }

  function oldestMsgId(peer: string): string | undefined {
    return conversations.get(peer)?.messages.find((m) => m.msgId !== undefined)?.msgId;
  }

  /** A dropped connection loses the answers it was waiting for. */
  function resetLoading(): void {
    for (const c of conversations.values()) if (c.history === 'loading') c.history = 'none';
  }

  return {
    me,
    conversation,
    merge,
    addPending,
    ack,
    fail,
    retry,
    pending,
    pendingMessage,
    unread,
    markRead,
    summaries,
    setHistory,
    oldestMsgId,
    resetLoading,
    messageCount: () => byMsgId.size,
  };
}
