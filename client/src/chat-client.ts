/**
 * The SimpleChat client, for browsers and Node alike, following the client
 * rules of PROTOCOL.md:
 *
 * - every send keeps its `id` until acked and is resent with it (./outbox);
 * - reconnects with jittered exponential backoff, moving on to the next URL of
 *   `urls` when a connection cannot be opened, drops before registering,
 *   stops answering (ping, sync: a hung instance), or closes with 1001 / 1013;
 * - after every (re)register, `sync`s from the saved cursor (not the one in
 *   `registered`) and repeats while `more`; also on `sync.hint` and every
 *   `syncIntervalMs` while connected;
 * - shows each msgId once (a bounded set of recently seen ids);
 * - keeps the token fresh: reuses an unexpired one on reconnect, refreshes it
 *   on the connection before its exp;
 * - every wait is bounded: the open and `registered`, each request (a `sync`
 *   without an answer drops the connection), each ack (then resent), and, on
 *   sockets that can ping (ws), a WebSocket ping the server must answer.
 *
 * - keeps what a chat screen needs: presence of watched users, watched again
 *   on every connection (./presence); receipts, `delivered` sent on its own
 *   and `read` on markRead, as the highest position below which the client
 *   has no hole (./marks); typing, the conversation list, mutes.
 *
 * Requests answered by `id` (history, rooms, anything newer) go through
 * `request`; every server frame the client does not handle itself is handed
 * to the `frame` event.
 */
import { backoffMs } from './backoff.js';
import { Emitter } from './emitter.js';
import { ChatClientClosedError, RequestError } from './errors.js';
import { isFrameOf, parseServerFrame, type InboundFrame } from './frames.js';
import { randomPrefix } from './ids.js';
import { createMarks, type ConversationRef } from './marks.js';
import { createOutbox, type Ack } from './outbox.js';
import { createPresence } from './presence.js';
import type { ClientPersistence, OutboxEntry } from './persistence.js';
import { createRequests, type RequestFrame } from './requests.js';
import { openSocket, resolveWebSocket, type Socket, type WebSocketConstructor } from './socket.js';
import { isTokenFresh, jwtExp, refreshDelayMs } from './token.js';
import {
  CloseCode,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_SYNC_INTERVAL_MS,
  HISTORY_LIMIT,
  SYNC_LIMIT,
  type ConversationSummary,
  type MemberMarks,
  type PresenceState,
  type ReceiptKind,
  type RoomInfo,
  type RoomSummary,
  type ServerFrame,
  type WireMessage,
} from './wire.js';

export interface ChatClientOptions<C extends WebSocketConstructor = WebSocketConstructor> {
  /** one instance (ws://host:port/ws) */
  url?: string;
  /** several instances: the client starts at the first and moves on when one fails */
  urls?: readonly string[];
  /** a JWT for the user (may return a promise); called when no cached token has a minute left, and to refresh one */
  getToken(): string | Promise<string>;
  /** the WebSocket class; default `globalThis.WebSocket` (browsers). In Node pass `ws`'s. */
  WebSocket?: C;
  /** extra headers of the upgrade request (e.g. Origin): Node (`ws`) only, browsers set their own */
  headers?: Record<string, string>;
  /** called with each new socket, the WebSocket class's own object (tests, metrics) */
  onSocket?(socket: InstanceType<C>): void;
  /** where the cursor and the unacked outbox are kept across restarts (default: memory) */
  persistence?: ClientPersistence;
  /** the saved cursor to sync from when the persistence has none; without either the cursor of the first `registered` is taken */
  cursor?: string;
  /** overrides the server's syncIntervalMs */
  syncIntervalMs?: number;
  /** messages per `sync` request (1-500) */
  syncLimit?: number;
  /** first reconnect delay; doubles up to maxBackoffMs, with jitter */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** bound of each request's answer (`sync`, history, rooms); twice this bounds the open and `registered` */
  requestTimeoutMs?: number;
  /** a send without any answer in this time is sent again (same id) */
  ackTimeoutMs?: number;
  /** WebSocket ping period, on sockets that can ping (ws); no pong by the next ping drops the connection (0: no pings) */
  pingIntervalMs?: number;
  /** how many msgIds are remembered to show each message once */
  dedupeCapacity?: number;
  /** prefix of generated send and request ids (default: random) */
  idPrefix?: string;
  /** a send whose frame is larger is refused here (too_large) instead of getting the connection closed (1009) */
  maxFrameBytes?: number;
  /** refresh the token on the connection before its exp (default true) */
  refreshToken?: boolean;
  /** send `delivered` receipts as messages arrive (default true; without receipts the server counts nothing as received) */
  autoDelivered?: boolean;
  /** a typing signal per conversation is sent at most this often (default 1000 ms) */
  typingIntervalMs?: number;
}

export type { ConversationRef };

/** A receipt as the client reports it: a direct one is the marks of one user (`by`). */
export interface ReceiptEvent {
  kind: ReceiptKind;
  conversation: ConversationRef;
  /** user -> the position it has received (delivered) or shown (read) up to */
  marks: Record<string, number>;
  ts: number;
}

export interface ConversationsPage {
  conversations: ConversationSummary[];
  more: boolean;
}

export type { Ack };

export interface SendOptions {
  /** the idempotency key; generated when absent */
  id?: string;
}

export interface HistoryOptions {
  /** the msgId to page back from (the oldest one shown) */
  before?: string;
  limit?: number;
}

export interface HistoryPage {
  /** positions in the page's range that will never hold a message */
  empty: number[];
  /** oldest first */
  messages: WireMessage[];
  /** older messages exist */
  more: boolean;
}

export interface RoomsPage {
  rooms: RoomSummary[];
  more: boolean;
}

export type ChatClientState = 'connecting' | 'registering' | 'ready' | 'waiting' | 'closed';

export type ChatClientEvents = {
  /** a message seen for the first time, live (`source: 'live'`) or through sync */
  message: (message: WireMessage, source: 'live' | 'sync') => void;
  /** the first ack of a send; `to` is the user, or the room */
  ack: (ack: Ack & { to: string; attempts: number }) => void;
  /** a send refused for good (bad_request, too_large, forbidden, not_found) */
  rejected: (send: { id: string; to: string; code: string; message: string }) => void;
  registered: (info: { userId: string; instanceId: string; url: string; cursor?: string }) => void;
  disconnected: (info: { code: number; reason: string; url: string }) => void;
  /** a sync chain finished: everything stored up to `cursor` has been seen */
  synced: (cursor: string) => void;
  /** a `sync` was answered with an error (storage unavailable...): tried again at the next hint or interval */
  syncFailed: (error: RequestError) => void;
  /** getToken failed (`connect`: tried again with backoff, unless the listener closes the client), or a refresh was refused */
  tokenFailed: (error: unknown, during: 'connect' | 'refresh') => void;
  /** a server frame the client does not handle itself (room events, errors without a pending request, newer frame types) */
  frame: (frame: InboundFrame) => void;
  /** every frame from the server, parsed, before the client handles it (observability, tests) */
  inbound: (frame: InboundFrame) => void;
  state: (state: ChatClientState) => void;
  /** watched users whose state the client learned (answers and changes) */
  presence: (users: Record<string, PresenceState>) => void;
  /** someone typing to this user, or into a room */
  typing: (typing: { from: string; conversation: ConversationRef }) => void;
  /** marks of others (and of this user's other connections) */
  receipt: (receipt: ReceiptEvent) => void;
};

export interface ChatClient {
  /** Sends a message to a user (or `{ room }`) and resolves with its ack, resending as needed; rejects only when refused or closed. */
  send(to: string | { room: string }, body: string, options?: SendOptions): Promise<Ack>;
  /** Sends a frame with a fresh `id` and resolves with the answer carrying it; rejects on an `error` with it, on timeout, or when not connected / disconnected. */
  request(frame: RequestFrame, options?: { timeoutMs?: number }): Promise<InboundFrame>;
  /** A page of a direct conversation (`{ with }`) or a room's (`{ room }`), oldest first. */
  history(conversation: { with: string } | { room: string }, options?: HistoryOptions): Promise<HistoryPage>;
  createRoom(name: string, members: readonly string[]): Promise<RoomInfo>;
  addMember(room: string, userId: string): Promise<RoomInfo>;
  removeMember(room: string, userId: string): Promise<RoomInfo>;
  leaveRoom(room: string): Promise<void>;
  getRoom(room: string): Promise<RoomInfo>;
  /** Every current member's `delivered` and `read` marks in a room (ticks after a reload); members only. */
  roomMarks(room: string): Promise<MemberMarks>;
  /** One page of the caller's rooms, after the room id `after`. */
  listRooms(after?: string): Promise<RoomsPage>;
  /** All of the caller's rooms (every page). */
  listAllRooms(): Promise<RoomSummary[]>;
  /** Starts a sync chain now (coalesced with one under way). */
  sync(): void;
  /** Watches users' presence (on every connection from now on); resolves with their states. */
  watch(users: readonly string[]): Promise<Record<string, PresenceState>>;
  unwatch(users: readonly string[]): void;
  /** the last known state of a watched user */
  presenceOf(user: string): PresenceState | undefined;
  /** Tells the other side (or the room) this user is typing; at most once per typingIntervalMs per conversation. */
  typing(conversation: ConversationRef): void;
  /** Sends `read` up to the highest position below which this client has every message (call while the conversation is shown); resolves with it, or undefined when nothing new was read. */
  markRead(conversation: ConversationRef): number | undefined;
  /** this client's `delivered` and `read` positions in a conversation */
  marksOf(conversation: ConversationRef): { delivered: number; read: number };
  /** A page of the conversation list, newest first (`before`: the last message ts of the previous page's last line). */
  conversations(before?: number): Promise<ConversationsPage>;
  /** Mutes notifications of a conversation until `until` (ms since the epoch); 0 unmutes. */
  mute(conversation: ConversationRef, until: number): Promise<void>;
  on<E extends keyof ChatClientEvents>(event: E, listener: ChatClientEvents[E]): () => void;
  /** sends not acked yet */
  pending(): number;
  /** the sends not acked yet, oldest first */
  outbox(): OutboxEntry[];
  /** resolves once no send is pending, or rejects after timeoutMs */
  idle(timeoutMs: number): Promise<void>;
  /** Skips a backoff wait (the network is back). */
  reconnectNow(): void;
  /** the saved cursor (the last one a sync answer gave) */
  readonly cursor: string | undefined;
  readonly state: ChatClientState;
  readonly userId: string | undefined;
  readonly instanceId: string | undefined;
  /** URL of the current (or last) connection */
  readonly url: string;
  /** when the next connection attempt starts (state `waiting`) */
  readonly reconnectAt: number | undefined;
  /** the period of the periodic sync on this connection */
  readonly syncIntervalMs: number;
  /** exp (seconds) of the token in use, when it has one */
  readonly tokenExp: number | undefined;
  hasSeen(msgId: string): boolean;
  /** Stops reconnecting, rejects pending sends with ChatClientClosedError (a persisted outbox keeps them), closes the socket. */
  close(): Promise<void>;
}

const DEFAULTS = {
  syncLimit: SYNC_LIMIT.max,
  minBackoffMs: 200,
  maxBackoffMs: 10_000,
  requestTimeoutMs: 15_000,
  ackTimeoutMs: 15_000,
  pingIntervalMs: 15_000,
  dedupeCapacity: 50_000,
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  refreshToken: true,
} as const;
/** a connection that stayed registered this long resets the backoff */
const STABLE_AFTER_MS = 5_000;
/** the server's syncIntervalMs is taken, but never below this */
const MIN_SYNC_INTERVAL_MS = 1_000;
/** a failed getToken for a refresh is tried again after this */
const REFRESH_RETRY_MS = 10_000;
/** how long close() waits for the closing handshake */
const CLOSE_WAIT_MS = 2_000;
/** arrivals gathered before `delivered` receipts go out */
const RECEIPT_FLUSH_MS = 250;
/** least time between two typing signals of one conversation (the server relays 2 a second) */
const TYPING_INTERVAL_MS = 1000;
/** WebSocket's own code for a close on purpose (RFC 6455), not one of the protocol's CloseCodes */
const NORMAL_CLOSURE = 1000;
/** what a connection that stopped answering is recorded as closing with (RFC 6455: closed abnormally) */
const ABNORMAL_CLOSURE = 1006;

/** An answer of the expected type, or a RequestError. */
function expectFrame<T extends ServerFrame['type']>(frame: InboundFrame, type: T): Extract<ServerFrame, { type: T }> {
  if (isFrameOf(frame, type)) return frame;
  throw new RequestError('bad_answer', `expected a '${type}' answer, got '${frame.type}'`);
}

export function createChatClient<C extends WebSocketConstructor = WebSocketConstructor>(options: ChatClientOptions<C>): ChatClient {
  const urls = options.urls?.length ? [...options.urls] : options.url ? [options.url] : [];
  if (urls.length === 0) throw new Error('createChatClient needs url or urls');
  const o = { ...DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as typeof DEFAULTS & ChatClientOptions<C>;
  const WebSocketClass = resolveWebSocket(options.WebSocket);
  const idPrefix = options.idPrefix ?? randomPrefix();
  const events = new Emitter<ChatClientEvents>();
  const saved = options.persistence?.load();

  const seen = new Set<string>();
  let state: ChatClientState = 'waiting';
  let urlIndex = 0;
  let attempt = 0;
  let socket: Socket | undefined;
  /** bumped for every socket: late events and answers of an abandoned one are ignored */
  let gen = 0;
  let cursor = saved?.cursor ?? options.cursor;
  let userId: string | undefined;
  let instanceId: string | undefined;
  let syncIntervalMs = options.syncIntervalMs ?? DEFAULT_SYNC_INTERVAL_MS;
  let sendSeq = 0;
  let registeredAt = 0;
  let reconnectAt: number | undefined;
  let token: string | undefined;
  let tokenExp: number | undefined;

  let reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  let openTimer: ReturnType<typeof setTimeout> | undefined;
  let refreshTimer: ReturnType<typeof setTimeout> | undefined;
  let syncTimer: ReturnType<typeof setInterval> | undefined;
  let pingTimer: ReturnType<typeof setInterval> | undefined;
  let isAlive = true;
  let isUnresponsive = false;
  let isSyncing = false;
  let isSyncAgain = false;
  let closing: Promise<void> | undefined;

  const currentUrl = (): string => urls[urlIndex % urls.length] as string;
  /** A function, not `state === 'closed'` inline: listeners and awaits may close the client between two reads. */
  const isClosed = (): boolean => state === 'closed';

  function write(frame: object): boolean {
    return state === 'ready' && socket !== undefined && socket.send(JSON.stringify(frame));
  }

  function save(): void {
    options.persistence?.save({ cursor, outbox: outbox.entries() });
  }

  const requests = createRequests({ write, idPrefix: `${idPrefix}.`, timeoutMs: o.requestTimeoutMs });
  const outbox = createOutbox({
    write,
    ackTimeoutMs: o.ackTimeoutMs,
    maxFrameBytes: o.maxFrameBytes,
    changed: save,
    acked(ack, entry, attempts) {
      // The sender's other connections get the message live; this one shows it from its ack.
      remember(ack.msgId);
      marks.acked(entry.room !== undefined ? { room: entry.room } : { with: entry.to as string }, ack.seq);
      events.emit('ack', { ...ack, to: entry.room ?? entry.to, attempts });
    },
    rejected(entry, code, message) {
      events.emit('rejected', { id: entry.id, to: entry.room ?? entry.to, code, message });
    },
  });
  for (const entry of saved?.outbox ?? []) void outbox.add(entry);

  const marks = createMarks({
    userId: () => userId,
    write,
    conversations: async () => (await listConversations()).conversations,
    autoDelivered: options.autoDelivered ?? true,
    flushMs: RECEIPT_FLUSH_MS,
  });
  const presence = createPresence({
    async watch(users) {
      return expectFrame(await requests.send({ type: 'presence.watch', users }), 'presence').users;
    },
    write,
    changed: (users) => events.emit('presence', users),
  });
  /** when each conversation's last typing signal went out */
  const typingSentAt = new Map<string, number>();

  function setState(s: ChatClientState): void {
    if (state === s) return;
    state = s;
    events.emit('state', s);
  }

  function remember(msgId: string): boolean {
    if (seen.has(msgId)) return false;
    seen.add(msgId);
    if (seen.size > o.dedupeCapacity) {
      // Sets iterate in insertion order: drop the oldest.
      const oldest = seen.values().next().value;
      if (oldest !== undefined) seen.delete(oldest);
    }
    return true;
  }

  function deliver(message: WireMessage, source: 'live' | 'sync'): void {
    marks.message(message);
    if (remember(message.msgId)) events.emit('message', message, source);
  }

  // ---- connection ------------------------------------------------------------

  async function ensureToken(): Promise<string> {
    if (token !== undefined && isTokenFresh(tokenExp)) return token;
    const t = await options.getToken();
    token = t;
    tokenExp = jwtExp(t);
    return t;
  }

  async function connect(): Promise<void> {
    reconnectTimer = undefined;
    reconnectAt = undefined;
    if (state === 'closed') return;
    const my = ++gen;
    isUnresponsive = false;
    const url = currentUrl();
    setState('connecting');
    let t: string;
    try {
      t = await ensureToken();
    } catch (err) {
      if (my !== gen || isClosed()) return;
      events.emit('tokenFailed', err, 'connect');
      scheduleReconnect(false);
      return;
    }
    if (my !== gen || isClosed()) return;
    let s: Socket;
    try {
      s = openSocket(WebSocketClass, url, options.headers ? { headers: options.headers } : undefined, {
        open: () => {
          if (my !== gen) return;
          setState('registering');
          s.send(JSON.stringify({ type: 'register', token: t }));
        },
        text: (data) => {
          if (my === gen) onText(data, url);
        },
        close: (code, reason) => {
          if (my === gen) onClosed(code, reason, url);
        },
        pong: () => {
          if (my === gen) isAlive = true;
        },
      });
    } catch {
      scheduleReconnect(true);
      return;
    }
    socket = s;
    options.onSocket?.(s.raw as InstanceType<C>);
    // Bounds the open and the register answer together.
    openTimer = setTimeout(() => {
      if (my === gen && state !== 'ready') abandon(url);
    }, o.requestTimeoutMs * 2);
  }

  function onRegistered(f: Extract<ServerFrame, { type: 'registered' }>, url: string): void {
    if (state === 'ready') return;
    clearTimeout(openTimer);
    openTimer = undefined;
    userId = f.userId;
    instanceId = f.instanceId;
    syncIntervalMs = options.syncIntervalMs ?? Math.max(MIN_SYNC_INTERVAL_MS, f.syncIntervalMs);
    // The first cursor ever is the starting point; afterwards the saved one wins (nothing in between is missed).
    if (cursor === undefined && f.cursor !== undefined) {
      cursor = f.cursor;
      save();
    }
    registeredAt = Date.now();
    setState('ready');
    events.emit('registered', { userId: f.userId, instanceId: f.instanceId, url, ...(f.cursor !== undefined ? { cursor: f.cursor } : {}) });
    if (isClosed()) return; // a listener closed the client
    outbox.connected();
    startTimers();
    startSync();
    presence.registered();
    marks.registered();
  }

  /** Forgets everything that belonged to the connection that just went away. */
  function teardown(err: RequestError): void {
    clearTimeout(openTimer);
    clearTimeout(refreshTimer);
    clearInterval(pingTimer);
    clearInterval(syncTimer);
    openTimer = refreshTimer = pingTimer = syncTimer = undefined;
    socket = undefined;
    isSyncing = false;
    isSyncAgain = false;
    requests.failAll(err);
    outbox.disconnected();
  }

  function onClosed(code: number, reason: string, url: string): void {
    const wasReady = state === 'ready';
    teardown(new RequestError('disconnected', `connection closed (${code})`));
    if (state === 'closed') return;
    // Expired or refused token: get a new one for the next attempt.
    if (code === CloseCode.UNAUTHORIZED) token = tokenExp = undefined;
    if (wasReady && Date.now() - registeredAt >= STABLE_AFTER_MS) attempt = 0;
    events.emit('disconnected', { code, reason, url });
    // 1001: the instance is going away; 1013: overloaded; no answer, or a drop before registering: down or hung.
    const moveOn = code === CloseCode.GOING_AWAY || code === CloseCode.TRY_AGAIN_LATER || !wasReady || isUnresponsive;
    scheduleReconnect(moveOn);
  }

  function scheduleReconnect(moveOn: boolean): void {
    if (state === 'closed' || reconnectTimer) return;
    if (moveOn) urlIndex = (urlIndex + 1) % urls.length;
    // Right after a good connection drops, try at once (on another instance when there is one).
    const delay = attempt === 0 ? Math.round(Math.random() * o.minBackoffMs) : backoffMs(attempt, o.minBackoffMs, o.maxBackoffMs);
    attempt++;
    reconnectAt = Date.now() + delay;
    reconnectTimer = setTimeout(() => void connect(), delay);
    setState('waiting');
  }

  /** The connection stopped answering (open, register, ping, sync): presume the instance hung, drop it, try the next one. */
  function abandon(url: string): void {
    const s = socket;
    if (!s) return;
    isUnresponsive = true;
    gen++; // its late events are not ours any more
    s.drop();
    onClosed(ABNORMAL_CLOSURE, 'no answer', url);
  }

  function startTimers(): void {
    const s = socket;
    const url = currentUrl();
    if (s?.canPing && o.pingIntervalMs > 0) {
      isAlive = true;
      pingTimer = setInterval(() => {
        if (!isAlive) return abandon(url);
        isAlive = false;
        s.ping();
      }, o.pingIntervalMs);
    }
    syncTimer = setInterval(startSync, syncIntervalMs);
    scheduleRefresh();
  }

  // ---- token refresh ------------------------------------------------------------

  function scheduleRefresh(): void {
    clearTimeout(refreshTimer);
    refreshTimer = undefined;
    if (!o.refreshToken || tokenExp === undefined || state !== 'ready') return;
    refreshTimer = setTimeout(() => void refresh(), refreshDelayMs(tokenExp));
  }

  async function refresh(): Promise<void> {
    const my = gen;
    let t: string;
    try {
      t = await options.getToken();
    } catch (err) {
      if (my !== gen || state !== 'ready') return;
      events.emit('tokenFailed', err, 'refresh');
      refreshTimer = setTimeout(() => void refresh(), REFRESH_RETRY_MS);
      return;
    }
    const exp = jwtExp(t);
    // Only a token that lives longer helps; otherwise the next connection takes a new one.
    if (exp === undefined || (tokenExp !== undefined && exp <= tokenExp)) return;
    if (my !== gen || state !== 'ready') {
      // The connection went away meanwhile: the next register uses the new token.
      token = t;
      tokenExp = exp;
      return;
    }
    try {
      const answer = expectFrame(await requests.send({ type: 'refresh', token: t }), 'refreshed');
      if (my !== gen) return;
      token = t;
      tokenExp = answer.exp;
      scheduleRefresh();
    } catch (err) {
      if (my !== gen || (err instanceof RequestError && (err.code === 'disconnected' || err.code === 'closed'))) return;
      events.emit('tokenFailed', err, 'refresh');
    }
  }

  // ---- frames ------------------------------------------------------------------

  function onText(text: string, url: string): void {
    const f = parseServerFrame(text);
    if (!f) return;
    events.emit('inbound', f);
    if (requests.settle(f)) return;
    if (isFrameOf(f, 'registered')) return onRegistered(f, url);
    if (isFrameOf(f, 'ack')) return void outbox.onAck(f);
    if (isFrameOf(f, 'message')) {
      const { type: _type, ...message } = f;
      return deliver(message, 'live');
    }
    if (isFrameOf(f, 'sync.hint')) return startSync();
    if (isFrameOf(f, 'presence')) return presence.pushed(f.users);
    if (isFrameOf(f, 'typing')) return void events.emit('typing', { from: f.from, conversation: 'room' in f ? { room: f.room } : { with: f.from } });
    if (isFrameOf(f, 'receipt')) return onReceipt(f);
    if (isFrameOf(f, 'error') && (outbox.onError(f) || (f.id !== undefined && marks.failed(f.id, f.code)))) return;
    events.emit('frame', f);
  }

  /** Marks of this user (from its other connections) raise its own; everyone's go to the application. */
  function onReceipt(f: Extract<ServerFrame, { type: 'receipt' }>): void {
    if ('room' in f) {
      const conversation = { room: f.room };
      const mine = userId === undefined ? undefined : f.marks[userId];
      if (mine !== undefined) marks.own(conversation, f.kind, mine);
      events.emit('receipt', { kind: f.kind, conversation, marks: f.marks, ts: f.ts });
      return;
    }
    const conversation = { with: f.with };
    if (f.by === userId) marks.own(conversation, f.kind, f.upTo);
    events.emit('receipt', { kind: f.kind, conversation, marks: { [f.by]: f.upTo }, ts: f.ts });
  }

  // ---- sync ----------------------------------------------------------------------

  function startSync(): void {
    if (state !== 'ready' || cursor === undefined) return;
    if (isSyncing) {
      isSyncAgain = true;
      return;
    }
    isSyncing = true;
    const my = gen;
    const after = cursor;
    requests.send({ type: 'sync', after, limit: o.syncLimit }).then(
      (frame) => {
        if (my !== gen) return;
        isSyncing = false;
        const answer = isFrameOf(frame, 'sync') ? frame : undefined;
        if (!answer) return;
        for (const m of answer.messages) deliver(m, 'sync');
        for (const e of answer.empty ?? []) marks.empty('room' in e ? { room: e.room } : { with: e.with }, e.seqs);
        const moved = answer.cursor !== after;
        cursor = answer.cursor;
        if (moved) save();
        // `more` with a cursor that did not move would loop: the interval tries again instead.
        if ((answer.more && moved) || isSyncAgain) {
          isSyncAgain = false;
          startSync();
        } else events.emit('synced', answer.cursor);
      },
      (err: unknown) => {
        if (my !== gen) return;
        isSyncing = false;
        isSyncAgain = false;
        if (!(err instanceof RequestError)) return;
        // No answer: presume the socket dead (a silent drop) and start over elsewhere.
        if (err.code === 'timeout') abandon(currentUrl());
        else if (err.code !== 'disconnected' && err.code !== 'closed') events.emit('syncFailed', err);
      },
    );
  }

  // ---- public ----------------------------------------------------------------------

  async function request(frame: RequestFrame, requestOptions: { timeoutMs?: number } = {}): Promise<InboundFrame> {
    if (state === 'closed') throw new RequestError('closed', `${frame.type}: the client is closed`);
    return requests.send(frame, requestOptions.timeoutMs);
  }

  async function roomInfo(frame: RequestFrame): Promise<RoomInfo> {
    const { room, name, owner, members } = expectFrame(await request(frame), 'room.info');
    return { room, name, owner, members };
  }

  async function listConversations(before?: number): Promise<ConversationsPage> {
    const f = expectFrame(await request(before === undefined ? { type: 'conversations' } : { type: 'conversations', before }), 'conversations');
    for (const line of f.conversations) {
      marks.listed('room' in line ? { room: line.room } : { with: line.with }, line.readUpTo, line.deliveredUpTo);
    }
    return { conversations: f.conversations, more: f.more };
  }

  async function listRooms(after?: string): Promise<RoomsPage> {
    const f = expectFrame(await request(after === undefined ? { type: 'room.list' } : { type: 'room.list', after }), 'rooms');
    return { rooms: f.rooms, more: f.more };
  }

  void connect();

  return {
    send(to, body, sendOptions = {}) {
      if (state === 'closed') return Promise.reject(new ChatClientClosedError());
      const id = sendOptions.id ?? `${idPrefix}-${++sendSeq}`;
      const base = { id, body, createdAt: Date.now() };
      return outbox.add(typeof to === 'string' ? { ...base, to } : { ...base, room: to.room });
    },
    request,
    async history(conversation, historyOptions = {}) {
      const page = { type: 'history', limit: historyOptions.limit ?? HISTORY_LIMIT.default, ...(historyOptions.before !== undefined ? { before: historyOptions.before } : {}) } as const;
      const f = expectFrame(await request('room' in conversation ? { ...page, room: conversation.room } : { ...page, with: conversation.with }), 'history');
      for (const m of f.messages) marks.message(m);
      marks.empty(conversation, f.empty ?? []);
      return { messages: f.messages, more: f.more, empty: f.empty ?? [] };
    },
    createRoom: (name, members) => roomInfo({ type: 'room.create', name, members: [...members] }),
    addMember: (room, member) => roomInfo({ type: 'room.add', room, userId: member }),
    removeMember: (room, member) => roomInfo({ type: 'room.remove', room, userId: member }),
    async leaveRoom(room) {
      expectFrame(await request({ type: 'room.leave', room }), 'room.left');
    },
    getRoom: (room) => roomInfo({ type: 'room.get', room }),
    async roomMarks(room) {
      const { delivered, read } = expectFrame(await request({ type: 'room.marks', room }), 'room.marks');
      return { room, delivered, read };
    },
    listRooms,
    async listAllRooms() {
      const all: RoomSummary[] = [];
      for (let page = await listRooms(); ; page = await listRooms(all[all.length - 1]?.room)) {
        all.push(...page.rooms);
        if (!page.more || page.rooms.length === 0) return all;
      }
    },
    sync: startSync,
    watch: (users) => presence.watch(users),
    unwatch: (users) => presence.unwatch(users),
    presenceOf: (user) => presence.of(user),
    typing(conversation) {
      const key = 'room' in conversation ? `room:${conversation.room}` : `with:${conversation.with}`;
      const now = Date.now();
      if (now - (typingSentAt.get(key) ?? 0) < (options.typingIntervalMs ?? TYPING_INTERVAL_MS)) return;
      if (write({ type: 'typing', ...('room' in conversation ? { room: conversation.room } : { to: conversation.with }) })) typingSentAt.set(key, now);
    },
    markRead: (conversation) => marks.markRead(conversation),
    marksOf: (conversation) => marks.of(conversation),
    conversations: listConversations,
    async mute(conversation, until) {
      expectFrame(await request({ type: 'mute', ...conversation, until }), 'muted');
    },
    on: (event, listener) => events.on(event, listener),
    pending: () => outbox.size(),
    outbox: () => outbox.entries(),
    idle: (timeoutMs) => outbox.idle(timeoutMs),
    reconnectNow() {
      if (state !== 'waiting' || reconnectTimer === undefined) return;
      clearTimeout(reconnectTimer);
      void connect();
    },
    get cursor() {
      return cursor;
    },
    get state() {
      return state;
    },
    get userId() {
      return userId;
    },
    get instanceId() {
      return instanceId;
    },
    get url() {
      return currentUrl();
    },
    get reconnectAt() {
      return reconnectAt;
    },
    get syncIntervalMs() {
      return syncIntervalMs;
    },
    get tokenExp() {
      return tokenExp;
    },
    hasSeen: (msgId) => seen.has(msgId),
    close() {
      closing ??= (async () => {
        const s = socket;
        clearTimeout(reconnectTimer);
        reconnectTimer = reconnectAt = undefined;
        gen++;
        setState('closed');
        teardown(new RequestError('closed', 'the client is closed'));
        outbox.rejectAll(new ChatClientClosedError());
        if (!s || s.isClosed) return;
        s.close(NORMAL_CLOSURE, 'client closed');
        await s.closed(CLOSE_WAIT_MS);
      })();
      return closing;
    },
  };
}
