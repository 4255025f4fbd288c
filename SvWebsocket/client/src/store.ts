/**
 * Conversations, rooms and messages of one signed-in user, without DOM or
 * socket. Every msgId is kept once (live, history, sync and acks all merge
 * here), and each conversation is ordered by msgId (ULIDs: string order is
 * time order), with messages still waiting for their ack last, in the order
 * they were typed. A conversation is keyed by the peer's user id, or for a
 * room by roomKey(room id).
 */
import type { ConversationRef, OutboxEntry, RoomEventFrame, RoomEventKind, RoomInfo, RoomSummary, WireMessage } from './esm/index.js';

export type MsgState = 'sending' | 'sent' | 'failed' | 'received';

/** `#` cannot occur in a user id, so a room's key never equals a peer's. */
const ROOM_KEY_PREFIX = '#';

export function roomKey(room: string): string {
  return ROOM_KEY_PREFIX + room;
}

export function roomOfKey(key: string): string | undefined {
  return key.startsWith(ROOM_KEY_PREFIX) ? key.slice(ROOM_KEY_PREFIX.length) : undefined;
}

/** The client package's name of a conversation, from its key. */
export function refOfKey(key: string): ConversationRef {
  const room = roomOfKey(key);
  return room !== undefined ? { room } : { with: key };
}

/** The key of a conversation the client package names. */
export function keyOfRef(ref: ConversationRef): string {
  return 'room' in ref ? roomKey(ref.room) : ref.with;
}

export interface ChatMessage {
  /** Client id of a message sent from this page (its idempotency key). */
  cid?: string;
  msgId?: string;
  from: string;
  /** the recipient of a direct message */
  to?: string;
  /** the room of a room message */
  room?: string;
  body: string;
  /** Server time; absent until acked. */
  ts?: number;
  /** Position in its conversation; absent until acked. */
  seq?: number;
  createdAt: number;
  state: MsgState;
  error?: string;
}

/** A membership change shown as a line in the room's timeline. */
export interface RoomNote {
  event: RoomEventKind;
  userId: string;
  /** null: made through the server API */
  by: string | null;
  ts: number;
}

export type TimelineItem = { kind: 'msg'; m: ChatMessage } | { kind: 'note'; n: RoomNote };

export interface Conversation {
  key: string;
  messages: ChatMessage[];
  notes: RoomNote[];
  history: 'none' | 'loading' | 'loaded';
  /** The last history page said `more`: older messages can be loaded. */
  hasOlder: boolean;
}

export interface Room {
  room: string;
  name?: string;
  owner?: string;
  /** Known once a room.info arrived (room.create, room.get, room.add/remove answers); kept current by room events. */
  members?: string[];
  memberCount?: number;
  /** undefined: not known yet (a message of a room not listed); false: removed or left. */
  isMember?: boolean;
  lastAt: number;
}

export interface ConversationSummary {
  key: string;
  /** the room id of a room conversation */
  room?: string;
  /** a peer's user id, or a room's name */
  title: string;
  isLeft: boolean;
  last?: ChatMessage;
  lastAt: number;
}

export interface ChatStoreDeps {
  me: string;
  /** Mutated in place; owned by the persisted user state. */
  peers: Record<string, number>;
  roomNames: Record<string, string>;
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
  const { me, peers, roomNames, onChange } = deps;
  const conversations = new Map<string, Conversation>();
  const rooms = new Map<string, Room>();
  const byMsgId = new Map<string, ChatMessage>();
  const byCid = new Map<string, ChatMessage>();

  function conversation(key: string): Conversation {
    let c = conversations.get(key);
    if (!c) {
      c = { key, messages: [], notes: [], history: 'none', hasOlder: false };
      conversations.set(key, c);
    }
    return c;
  }

  function keyOf(m: { from: string; to?: string; room?: string }): string {
    if (m.room !== undefined) return roomKey(m.room);
    return m.from === me ? (m.to ?? me) : m.from;
  }

  function room(id: string): Room {
    let r = rooms.get(id);
    if (!r) {
      r = { room: id, name: roomNames[id], lastAt: 0 };
      rooms.set(id, r);
    }
    return r;
  }

  function touch(key: string, at: number): void {
    const id = roomOfKey(key);
    if (id !== undefined) {
      const r = room(id);
      if (r.lastAt < at) r.lastAt = at;
    } else if ((peers[key] ?? 0) < at) peers[key] = at;
  }

  function sort(c: Conversation): void {
    c.messages.sort(compare);
  }

  /** Adds the messages not seen yet; returns how many conversations changed. */
  function merge(list: readonly WireMessage[]): number {
    const touched = new Set<Conversation>();
    for (const w of list) {
      if (byMsgId.has(w.msgId)) continue;
      if (w.room === undefined && (w.to === undefined || (w.from !== me && w.to !== me))) continue;
      const m: ChatMessage = {
        msgId: w.msgId,
        from: w.from,
        ...(w.room !== undefined ? { room: w.room } : { to: w.to }),
        body: w.body,
        ts: w.ts,
        seq: w.seq,
        createdAt: w.ts,
        state: w.from === me ? 'sent' : 'received',
      };
      const c = conversation(keyOf(m));
      c.messages.push(m);
      byMsgId.set(w.msgId, m);
      touch(c.key, w.ts);
      touched.add(c);
    }
    for (const c of touched) sort(c);
    if (touched.size > 0) onChange();
    return touched.size;
  }

  function addPending(e: OutboxEntry): ChatMessage {
    const existing = byCid.get(e.id);
    if (existing) return existing;
    const m: ChatMessage = {
      cid: e.id,
      from: me,
      ...(e.room !== undefined ? { room: e.room } : { to: e.to }),
      body: e.body,
      createdAt: e.createdAt,
      state: 'sending',
    };
    const c = conversation(keyOf(m));
    c.messages.push(m);
    byCid.set(e.id, m);
    touch(c.key, e.createdAt);
    sort(c);
    onChange();
    return m;
  }

  function remove(m: ChatMessage): void {
    const c = conversations.get(keyOf(m));
    if (!c) return;
    const i = c.messages.indexOf(m);
    if (i >= 0) c.messages.splice(i, 1);
  }

  /** The ack of a pending send (ignored when the client id is unknown: already acked). */
  function ack(cid: string, msgId: string, ts: number, seq: number): void {
    const m = byCid.get(cid);
    if (!m) return;
    byCid.delete(cid);
    const seen = byMsgId.get(msgId);
    if (seen && seen !== m) {
      // Already shown: our own message came back live or through sync before the ack.
      remove(m);
    } else {
      m.msgId = msgId;
      m.ts = ts;
      m.seq = seq;
      m.state = 'sent';
      m.error = undefined;
      byMsgId.set(msgId, m);
      sort(conversation(keyOf(m)));
      touch(keyOf(m), ts);
    }
    onChange();
  }

  /** A send refused for good: it stays in its conversation, marked as not sent, with the reason. */
  function fail(cid: string, error: string): void {
    const m = byCid.get(cid);
    if (!m || m.state !== 'sending') return;
    m.state = 'failed';
    m.error = error;
    onChange();
  }

  function pending(): ChatMessage[] {
    return [...byCid.values()].filter((m) => m.state === 'sending').sort((a, b) => a.createdAt - b.createdAt);
  }

  /** The positions of the messages of others this page holds in a conversation. */
  function positionsFromOthers(key: string): number[] {
    const out: number[] = [];
    for (const m of conversations.get(key)?.messages ?? []) if (m.state === 'received' && m.seq !== undefined) out.push(m.seq);
    return out;
  }

  function summaries(current: string | undefined): ConversationSummary[] {
    const keys = new Set<string>(Object.keys(peers));
    for (const c of conversations.values()) if (c.messages.length > 0 || c.notes.length > 0) keys.add(c.key);
    for (const r of rooms.values()) keys.add(roomKey(r.room));
    if (current) keys.add(current);
    const out: ConversationSummary[] = [];
    for (const key of keys) {
      const c = conversations.get(key);
      const last = c?.messages[c.messages.length - 1];
      const lastMsgAt = last?.ts ?? last?.createdAt ?? 0;
      const id = roomOfKey(key);
      if (id !== undefined) {
        const r = room(id);
        out.push({ key, room: id, title: r.name ?? id, isLeft: r.isMember === false, last, lastAt: Math.max(r.lastAt, lastMsgAt) });
      } else {
        out.push({ key, title: key, isLeft: false, last, lastAt: Math.max(peers[key] ?? 0, lastMsgAt) });
      }
    }
    return out.sort((a, b) => b.lastAt - a.lastAt || a.title.localeCompare(b.title));
  }

  /** The conversation's messages with its room notes between them, in time order (pending sends last). */
  function timeline(key: string): TimelineItem[] {
    const c = conversations.get(key);
    if (!c) return [];
    const out: TimelineItem[] = [];
    let i = 0;
    for (const m of c.messages) {
      const at = m.msgId !== undefined ? (m.ts ?? m.createdAt) : Infinity;
      for (let n = c.notes[i]; n !== undefined && n.ts <= at; n = c.notes[++i]) out.push({ kind: 'note', n });
      out.push({ kind: 'msg', m });
    }
    for (let n = c.notes[i]; n !== undefined; n = c.notes[++i]) out.push({ kind: 'note', n });
    return out;
  }

  function setHistory(key: string, history: Conversation['history'], hasOlder?: boolean): void {
    const c = conversation(key);
    c.history = history;
    if (hasOlder !== undefined) c.hasOlder = hasOlder;
    onChange();
  }

  function oldestMsgId(key: string): string | undefined {
    return conversations.get(key)?.messages.find((m) => m.msgId !== undefined)?.msgId;
  }

  // ---- rooms ----------------------------------------------------------------------

  function setName(r: Room, name: string): void {
    r.name = name;
    if (roomNames[r.room] !== name) roomNames[r.room] = name;
  }

  function setRoomInfo(info: RoomInfo): void {
    const r = room(info.room);
    setName(r, info.name);
    r.owner = info.owner;
    r.members = [...info.members];
    r.memberCount = info.members.length;
    r.isMember = info.members.includes(me);
    onChange();
  }

  function setRoomSummaries(list: readonly RoomSummary[]): void {
    for (const s of list) {
      const r = room(s.room);
      setName(r, s.name);
      r.owner = s.owner;
      r.memberCount = s.memberCount;
      r.isMember = true;
    }
    if (list.length > 0) onChange();
  }

  /** After a complete room.list: a room this page thought it was in but that was not listed was left meanwhile. */
  function setRoomListComplete(listed: ReadonlySet<string>): void {
    let changed = false;
    for (const r of rooms.values()) {
      if (r.isMember === true && !listed.has(r.room)) {
        r.isMember = false;
        changed = true;
      }
    }
    if (changed) onChange();
  }

  function setLeft(id: string): void {
    const r = room(id);
    if (r.isMember === false) return;
    r.isMember = false;
    onChange();
  }

  /** Applies a membership change; returns true when the room's name or members are still unknown to a member. */
  function applyRoomEvent(f: RoomEventFrame): boolean {
    const r = room(f.room);
    const has = r.members?.includes(f.userId) ?? false;
    switch (f.event) {
      case 'created':
        r.isMember = true;
        r.owner ??= f.userId;
        break;
      case 'added':
        if (r.members && !has) r.members.push(f.userId);
        if (f.userId === me) r.isMember = true;
        break;
      case 'removed':
      case 'left':
        if (r.members && has) r.members = r.members.filter((u) => u !== f.userId);
        if (f.userId === me) r.isMember = false;
        break;
      case 'owner':
        r.owner = f.userId;
        break;
    }
    if (r.members) r.memberCount = r.members.length;
    else if (r.memberCount !== undefined && f.event === 'added') r.memberCount++;
    if (r.lastAt < f.ts) r.lastAt = f.ts;
    const c = conversation(roomKey(f.room));
    const note: RoomNote = { event: f.event, userId: f.userId, by: f.by, ts: f.ts };
    const i = c.notes.findIndex((n) => n.ts > note.ts);
    if (i < 0) c.notes.push(note);
    else c.notes.splice(i, 0, note);
    onChange();
    return r.isMember === true && (r.members === undefined || r.name === undefined);
  }

  return {
    me,
    conversation,
    merge,
    addPending,
    ack,
    fail,
    pending,
    positionsFromOthers,
    summaries,
    timeline,
    setHistory,
    oldestMsgId,
    room: (id: string): Room | undefined => rooms.get(id),
    setRoomInfo,
    setRoomSummaries,
    setRoomListComplete,
    setLeft,
    applyRoomEvent,
    messageCount: () => byMsgId.size,
  };
}
