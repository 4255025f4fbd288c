/**
 * One signed-in user's connection: token, register, reconnect with backoff,
 * catch-up through `sync` from the saved cursor, history requests, the room
 * requests (list on register, create, add, remove, leave, get), and the
 * outbox (every unacked send is resent with its same id until acked or
 * refused). No DOM here: the page renders the store and the status.
 */
import type { OutboxEntry, UserState } from './persist.js';
import { parseServerFrame } from './protocol.js';
import { roomKey, roomOfKey, type ChatStore } from './store.js';
import { backoffMs, jwtExp, randomId, utf8Bytes } from './util.js';
import {
  CloseCode,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_SYNC_INTERVAL_MS,
  ErrorCode,
  HISTORY_LIMIT,
  SYNC_LIMIT,
  type ClientFrame,
  type ServerFrame,
} from './wire.js';

/** Without an answer to a `sync` in this time the socket is presumed dead (a silent network drop). */
const SYNC_TIMEOUT_MS = 20_000;
/** A send still unanswered after this is sent again with the same id (the server deduplicates). */
const ACK_TIMEOUT_MS = 15_000;
/** A connection that stayed registered this long resets the backoff. */
const STABLE_AFTER_MS = 10_000;
/** The server closes an unregistered socket after 10 s (4408); this catches a handshake that hangs instead. */
const REGISTER_TIMEOUT_MS = 15_000;
const MIN_SYNC_INTERVAL_MS = 1_000;
/** WebSocket's own code for a close on purpose (RFC 6455), not one of the protocol's CloseCodes. */
const NORMAL_CLOSURE = 1000;
/** setTimeout fires at once for larger delays. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export type Status =
  | { kind: 'offline'; reason?: string }
  | { kind: 'connecting' }
  | { kind: 'online'; instanceId: string }
  | { kind: 'reconnecting'; at: number };

export class TokenError extends Error {
  constructor(
    message: string,
    /** A refusal that retrying will not fix (bad user id, no dev token route). */
    readonly isFatal: boolean,
  ) {
    super(message);
    this.name = 'TokenError';
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** POST /dev/token on this origin (development servers only). */
export async function fetchDevToken(userId: string): Promise<string> {
  let res: Response;
  try {
    res = await fetch('/dev/token', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ userId }),
      cache: 'no-store',
    });
  } catch (err) {
    throw new TokenError(`Could not reach /dev/token: ${errorText(err)}`, false);
  }
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  const field = (k: string): unknown => (typeof body === 'object' && body !== null ? Reflect.get(body, k) : undefined);
  if (!res.ok) {
    const error = field('error');
    const detail = typeof error === 'string' && error !== '' ? error : res.statusText || 'no detail';
    if (res.status === 404) {
      throw new TokenError('This server does not hand out development tokens (POST /dev/token: 404).', true);
    }
    const isFatal = res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429;
    throw new TokenError(`Token refused (HTTP ${res.status}): ${detail}`, isFatal);
  }
  const token = field('token');
  if (typeof token !== 'string' || token === '') throw new TokenError('POST /dev/token answered without a token', false);
  return token;
}

export interface SessionDeps {
  userId: string;
  wsUrl: string;
  fetchToken: (userId: string) => Promise<string>;
  store: ChatStore;
  /** Persisted user state, mutated in place; `persist()` writes it. */
  state: UserState;
  persist: () => void;
  onStatus: (status: Status) => void;
  onNotice: (text: string) => void;
  /** A room this page asked to create exists (its room.info arrived). */
  onRoomCreated: (room: string) => void;
}

type RoomRequest =
  | { kind: 'create'; name: string }
  | { kind: 'add' | 'remove'; room: string; userId: string }
  | { kind: 'leave' | 'get'; room: string }
  | { kind: 'list' };

export type Session = ReturnType<typeof createSession>;

export function createSession(deps: SessionDeps) {
  const { userId, store, state, persist } = deps;

  let ws: WebSocket | undefined;
  /** Bumped whenever a socket is abandoned, so its late events are ignored. */
  let gen = 0;
  let isStopped = true;
  let isRegistered = false;
  let registeredAt = 0;
  let attempt = 0;
  let status: Status = { kind: 'offline' };
  let token: string | undefined;
  let tokenExp: number | undefined;
  let instanceId: string | undefined;
  let syncIntervalMs = DEFAULT_SYNC_INTERVAL_MS;
  let current: string | undefined = state.peer;
  let seq = 0;

  let reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  let registerTimer: ReturnType<typeof setTimeout> | undefined;
  let refreshTimer: ReturnType<typeof setTimeout> | undefined;
  let syncTimer: ReturnType<typeof setInterval> | undefined;
  let sync: { id: string; timer: ReturnType<typeof setTimeout> } | undefined;
  let isSyncAgain = false;
  let refreshReq: { id: string; token: string } | undefined;
  const historyReqs = new Map<string, { key: string; before?: string }>();
  const roomReqs = new Map<string, RoomRequest>();
  /** Rooms with a room.get on the way (one each per connection). */
  const roomGets = new Set<string>();
  /** The rooms listed so far by the room.list pages of this connection. */
  let roomList: Set<string> | undefined;
  const ackTimers = new Map<string, ReturnType<typeof setTimeout>>();
  const resendTimers = new Map<string, ReturnType<typeof setTimeout>>();
  const unavailableCount = new Map<string, number>();

  for (const entry of state.outbox) store.addPending(entry);

  function setStatus(s: Status): void {
    status = s;
    deps.onStatus(s);
  }

  function sendRaw(frame: ClientFrame): boolean {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // ---- connection life cycle -------------------------------------------------

  function start(): void {
    if (!isStopped) return;
    isStopped = false;
    attempt = 0;
    void connect();
  }

  /** Skips a pending backoff wait (the browser says the network is back). */
  function reconnectNow(): void {
    if (!isStopped && reconnectTimer !== undefined) void connect();
  }

  async function connect(): Promise<void> {
    clearTimeout(reconnectTimer);
    reconnectTimer = undefined;
    if (isStopped) return;
    const my = ++gen;
    setStatus({ kind: 'connecting' });
    let t: string;
    try {
      t = await ensureToken();
    } catch (err) {
      if (my !== gen || isStopped) return;
      if (err instanceof TokenError && err.isFatal) {
        deps.onNotice(err.message);
        stop(err.message);
        return;
      }
      deps.onNotice(errorText(err));
      scheduleReconnect();
      return;
    }
    if (my !== gen || isStopped) return;
    let sock: WebSocket;
    try {
      sock = new WebSocket(deps.wsUrl);
    } catch (err) {
      deps.onNotice(`Cannot open ${deps.wsUrl}: ${errorText(err)}`);
      scheduleReconnect();
      return;
    }
    ws = sock;
    registerTimer = setTimeout(() => {
      if (my === gen && !isRegistered) abandon();
    }, REGISTER_TIMEOUT_MS);
    sock.onopen = () => {
      if (my === gen) sendRaw({ type: 'register', token: t });
    };
    sock.onmessage = (ev: MessageEvent) => {
      if (my === gen && typeof ev.data === 'string') onFrame(ev.data);
    };
    sock.onclose = (ev: CloseEvent) => {
      if (my === gen) onClose(ev.code, ev.reason);
    };
  }

  function scheduleReconnect(): void {
    clearTimeout(reconnectTimer);
    const delay = backoffMs(attempt++);
    setStatus({ kind: 'reconnecting', at: Date.now() + delay });
    reconnectTimer = setTimeout(() => void connect(), delay);
  }

  /** Forgets everything that belonged to the socket that just went away. */
  function dropped(): void {
    if (isRegistered && Date.now() - registeredAt >= STABLE_AFTER_MS) attempt = 0;
    ws = undefined;
    isRegistered = false;
    clearTimeout(registerTimer);
    registerTimer = undefined;
    instanceId = undefined;
    clearInterval(syncTimer);
    syncTimer = undefined;
    if (sync) clearTimeout(sync.timer);
    sync = undefined;
    isSyncAgain = false;
    clearTimeout(refreshTimer);
    refreshTimer = undefined;
    refreshReq = undefined;
    for (const t of ackTimers.values()) clearTimeout(t);
    ackTimers.clear();
    historyReqs.clear();
    roomReqs.clear();
    roomGets.clear();
    roomList = undefined;
    store.resetLoading();
  }

  function onClose(code: number, reason: string): void {
    dropped();
    if (isStopped) {
      setStatus({ kind: 'offline' });
      return;
    }
    switch (code) {
      case CloseCode.UNAUTHORIZED:
        // Expired or refused token: get a new one on the next attempt.
        token = undefined;
        tokenExp = undefined;
        scheduleReconnect();
        return;
      case CloseCode.POLICY_VIOLATION:
      case CloseCode.TOO_LARGE: {
        const why = reason || (code === CloseCode.TOO_LARGE ? 'a frame was too large' : 'too many bad frames');
        const text = `Disconnected by the server (${code}): ${why}`;
        deps.onNotice(text);
        stop(text);
        return;
      }
      case CloseCode.TOO_MANY_CONNECTIONS:
        deps.onNotice(`Too many connections (${code})${reason ? `: ${reason}` : ''}; retrying later`);
        scheduleReconnect();
        return;
      default:
        // 1001 (instance shutting down), 1013 (could not keep up), 4408, network drops.
        scheduleReconnect();
    }
  }

  /** Abandons a socket that stopped answering, then reconnects as after a drop. */
  function abandon(): void {
    const old = ws;
    gen++;
    try {
      old?.close(4000, 'no answer');
    } catch {
      // Already closing.
    }
    onClose(1006, '');
  }

  function stop(reason?: string): void {
    isStopped = true;
    gen++;
    clearTimeout(reconnectTimer);
    reconnectTimer = undefined;
    const old = ws;
    dropped();
    for (const t of resendTimers.values()) clearTimeout(t);
    resendTimers.clear();
    try {
      old?.close(NORMAL_CLOSURE, 'bye');
    } catch {
      // Already closing.
    }
    setStatus(reason === undefined ? { kind: 'offline' } : { kind: 'offline', reason });
  }

  // ---- tokens -----------------------------------------------------------------

  async function ensureToken(): Promise<string> {
    if (token && (tokenExp === undefined || tokenExp * 1000 - Date.now() > 30_000)) return token;
    const t = await deps.fetchToken(userId);
    token = t;
    tokenExp = jwtExp(t);
    return t;
  }

  function scheduleRefresh(): void {
    clearTimeout(refreshTimer);
    refreshTimer = undefined;
    if (tokenExp === undefined || !isRegistered) return;
    const remaining = tokenExp * 1000 - Date.now();
    // A minute before exp; a short-lived token is refreshed halfway instead of in a loop.
    const delay = remaining > 120_000 ? remaining - 60_000 : Math.max(1_000, remaining / 2);
    refreshTimer = setTimeout(() => void refresh(), Math.min(delay, MAX_TIMER_MS));
  }

  async function refresh(): Promise<void> {
    const my = gen;
    let t: string;
    try {
      t = await deps.fetchToken(userId);
    } catch (err) {
      if (my !== gen || !isRegistered) return;
      deps.onNotice(`Token refresh failed: ${errorText(err)}`);
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => void refresh(), 10_000);
      return;
    }
    if (my !== gen || !isRegistered) {
      // The socket went away meanwhile: the next register uses the new token.
      token = t;
      tokenExp = jwtExp(t);
      return;
    }
    const id = `r${++seq}`;
    refreshReq = { id, token: t };
    sendRaw({ type: 'refresh', id, token: t });
  }

  // ---- inbound ----------------------------------------------------------------

  function onFrame(text: string): void {
    const f = parseServerFrame(text);
    if (!f) return;
    switch (f.type) {
      case 'registered':
        onRegistered(f);
        return;
      case 'refreshed':
        if (refreshReq) token = refreshReq.token;
        refreshReq = undefined;
        tokenExp = f.exp;
        scheduleRefresh();
        return;
      case 'ack':
        onAck(f.id, f.msgId, f.ts);
        return;
      case 'message':
        store.merge([f]);
        if (f.room !== undefined) learnRoom(f.room);
        return;
      case 'history':
        onHistory(f);
        return;
      case 'sync':
        onSync(f);
        return;
      case 'sync.hint':
        syncNow();
        return;
      case 'room.info':
        onRoomInfo(f);
        return;
      case 'room.left':
        if (f.id !== undefined) roomReqs.delete(f.id);
        store.setLeft(f.room);
        return;
      case 'rooms':
        onRooms(f);
        return;
      case 'room.event':
        if (store.applyRoomEvent(f)) getRoom(f.room);
        return;
      case 'error':
        onError(f);
        return;
    }
  }

  function onRegistered(f: Extract<ServerFrame, { type: 'registered' }>): void {
    if (isRegistered) return;
    isRegistered = true;
    clearTimeout(registerTimer);
    registerTimer = undefined;
    registeredAt = Date.now();
    instanceId = f.instanceId;
    syncIntervalMs = Math.max(MIN_SYNC_INTERVAL_MS, f.syncIntervalMs);
    setStatus({ kind: 'online', instanceId: f.instanceId });
    if (state.cursor !== undefined) {
      // A saved cursor (an earlier connection, or a reload): catch up from there, not from now.
      syncNow();
    } else if (f.cursor !== undefined) {
      // First connection ever: the past comes through history, the cursor marks "now".
      state.cursor = f.cursor;
      persist();
    }
    listRooms();
    if (current !== undefined) openConversation(current);
    for (const m of store.pending()) if (m.cid !== undefined) transmit(m.cid);
    syncTimer = setInterval(syncNow, syncIntervalMs);
    scheduleRefresh();
  }

  function onAck(cid: string, msgId: string, ts: number): void {
    clearSendTimers(cid);
    unavailableCount.delete(cid);
    if (store.ack(cid, msgId, ts)) dropFromOutbox(cid);
  }

  function onHistory(f: Extract<ServerFrame, { type: 'history' }>): void {
    const req = f.id !== undefined ? historyReqs.get(f.id) : undefined;
    if (f.id !== undefined) historyReqs.delete(f.id);
    store.merge(f.messages);
    const key = req?.key ?? ('with' in f ? f.with : roomKey(f.room));
    store.setHistory(key, 'loaded', f.more);
  }

  function onSync(f: Extract<ServerFrame, { type: 'sync' }>): void {
    const isOurs = sync !== undefined && (f.id === undefined || f.id === sync.id);
    store.merge(f.messages);
    for (const m of f.messages) if (m.room !== undefined) learnRoom(m.room);
    if (!isOurs || !sync) return;
    clearTimeout(sync.timer);
    sync = undefined;
    const moved = f.cursor !== state.cursor;
    state.cursor = f.cursor;
    persist();
    // `more` with a cursor that did not move would loop forever; the interval retries instead.
    if ((f.more && moved) || isSyncAgain) {
      isSyncAgain = false;
      syncNow();
    }
  }

  function onError(f: Extract<ServerFrame, { type: 'error' }>): void {
    const id = f.id;
    if (id !== undefined) {
      if (store.pendingMessage(id)) {
        onSendError(id, f);
        return;
      }
      if (sync && id === sync.id) {
        clearTimeout(sync.timer);
        sync = undefined;
        deps.onNotice(`Catch-up failed (${f.code}): ${f.message} Retrying shortly.`);
        return;
      }
      const h = historyReqs.get(id);
      if (h) {
        historyReqs.delete(id);
        store.setHistory(h.key, 'none');
        const room = roomOfKey(h.key);
        if (room !== undefined && (f.code === ErrorCode.FORBIDDEN || f.code === ErrorCode.NOT_FOUND)) {
          store.setLeft(room);
          return;
        }
        deps.onNotice(`History of ${room !== undefined ? `room ${roomTitle(room)}` : `the chat with ${h.key}`} failed (${f.code}): ${f.message}`);
        return;
      }
      const r = roomReqs.get(id);
      if (r) {
        roomReqs.delete(id);
        onRoomError(r, f);
        return;
      }
      if (refreshReq && id === refreshReq.id) {
        refreshReq = undefined;
        deps.onNotice(`Token refresh refused (${f.code}): ${f.message}`);
        return;
      }
    }
    const wait = f.retryAfterMs !== undefined ? ` (retry in ${Math.ceil(f.retryAfterMs / 1000)} s)` : '';
    deps.onNotice(`${describeCode(f.code)}: ${f.message || f.code}${wait}`);
  }

  // ---- sync and history -------------------------------------------------------

  function syncNow(): void {
    if (!isRegistered || state.cursor === undefined) return;
    if (sync) {
      isSyncAgain = true;
      return;
    }
    const id = `s${++seq}`;
    sync = { id, timer: setTimeout(abandon, SYNC_TIMEOUT_MS) };
    sendRaw({ type: 'sync', id, after: state.cursor, limit: SYNC_LIMIT.default });
  }

  function loadHistory(key: string, isOlder = false): void {
    if (!isRegistered) return; // asked again on register
    const room = roomOfKey(key);
    // Room history is for current members only; a former member keeps what it saw.
    if (room !== undefined && store.room(room)?.isMember === false) return;
    const c = store.conversation(key);
    if (c.history === 'loading' || (!isOlder && c.history === 'loaded')) return;
    const before = isOlder ? store.oldestMsgId(key) : undefined;
    if (isOlder && before === undefined) return;
    const id = `h${++seq}`;
    historyReqs.set(id, before === undefined ? { key } : { key, before });
    store.setHistory(key, 'loading');
    const page = { type: 'history', id, limit: HISTORY_LIMIT.default, ...(before === undefined ? {} : { before }) } as const;
    sendRaw(room !== undefined ? { ...page, room } : { ...page, with: key });
  }

  function openConversation(key: string): void {
    current = key;
    if (state.peer !== key) {
      state.peer = key;
      persist();
    }
    const room = roomOfKey(key);
    if (room !== undefined) learnRoom(room);
    loadHistory(key);
  }

  // ---- rooms --------------------------------------------------------------------

  function roomTitle(room: string): string {
    const name = store.room(room)?.name;
    return name !== undefined ? `"${name}"` : room;
  }

  /** Sends a room request; false when offline (nothing is queued: the user asks again). */
  function roomRequest(req: RoomRequest, frame: ClientFrame): boolean {
    if (!isRegistered) {
      if (req.kind !== 'get' && req.kind !== 'list') deps.onNotice('Not connected: try again once online.');
      return false;
    }
    roomReqs.set(frame.id ?? '', req);
    return sendRaw(frame);
  }

  function listRooms(after?: string): void {
    const id = `l${++seq}`;
    if (after === undefined) roomList = new Set();
    roomRequest({ kind: 'list' }, after === undefined ? { type: 'room.list', id } : { type: 'room.list', id, after });
  }

  function getRoom(room: string): void {
    if (roomGets.has(room)) return;
    const id = `g${++seq}`;
    if (roomRequest({ kind: 'get', room }, { type: 'room.get', id, room })) roomGets.add(room);
  }

  /** Asks for a room's name and members when this page does not know them and may be a member. */
  function learnRoom(room: string): void {
    const r = store.room(room);
    if (r === undefined || (r.isMember !== false && (r.members === undefined || r.name === undefined))) getRoom(room);
  }

  function createRoom(name: string, members: string[]): void {
    roomRequest({ kind: 'create', name }, { type: 'room.create', id: `c${++seq}`, name, members });
  }

  function addMember(room: string, userId: string): void {
    roomRequest({ kind: 'add', room, userId }, { type: 'room.add', id: `a${++seq}`, room, userId });
  }

  function removeMember(room: string, userId: string): void {
    roomRequest({ kind: 'remove', room, userId }, { type: 'room.remove', id: `d${++seq}`, room, userId });
  }

  function leaveRoom(room: string): void {
    roomRequest({ kind: 'leave', room }, { type: 'room.leave', id: `v${++seq}`, room });
  }

  function onRoomInfo(f: Extract<ServerFrame, { type: 'room.info' }>): void {
    const req = f.id !== undefined ? roomReqs.get(f.id) : undefined;
    if (f.id !== undefined) roomReqs.delete(f.id);
    roomGets.delete(f.room);
    store.setRoomInfo(f);
    if (req?.kind === 'create') deps.onRoomCreated(f.room);
    // Just added (or just learned about): its history is now ours to load.
    if (current === roomKey(f.room)) loadHistory(current);
  }

  function onRooms(f: Extract<ServerFrame, { type: 'rooms' }>): void {
    const req = f.id !== undefined ? roomReqs.get(f.id) : undefined;
    if (f.id !== undefined) roomReqs.delete(f.id);
    if (req?.kind !== 'list' || !roomList) return;
    store.setRoomSummaries(f.rooms);
    for (const r of f.rooms) roomList.add(r.room);
    const last = f.rooms[f.rooms.length - 1];
    if (f.more && last !== undefined) {
      listRooms(last.room);
      return;
    }
    store.setRoomListComplete(roomList);
    roomList = undefined;
    const room = current !== undefined ? roomOfKey(current) : undefined;
    if (room !== undefined) learnRoom(room);
  }

  function onRoomError(req: RoomRequest, f: Extract<ServerFrame, { type: 'error' }>): void {
    const isGone = f.code === ErrorCode.FORBIDDEN || f.code === ErrorCode.NOT_FOUND;
    switch (req.kind) {
      case 'get':
        roomGets.delete(req.room);
        if (isGone) store.setLeft(req.room);
        return;
      case 'list':
        roomList = undefined;
        deps.onNotice(`Could not list your rooms (${f.code}): ${f.message}`);
        return;
      case 'create':
        deps.onNotice(`Could not create room "${req.name}" (${f.code}): ${f.message}`);
        return;
      case 'add':
        deps.onNotice(`Could not add ${req.userId} to ${roomTitle(req.room)} (${f.code}): ${f.message}`);
        return;
      case 'remove':
        deps.onNotice(`Could not remove ${req.userId} from ${roomTitle(req.room)} (${f.code}): ${f.message}`);
        return;
      case 'leave':
        if (isGone) store.setLeft(req.room);
        else deps.onNotice(`Could not leave ${roomTitle(req.room)} (${f.code}): ${f.message}`);
        return;
    }
  }

  // ---- sending ----------------------------------------------------------------

  /** Sends to a conversation: a peer's user id or a room key. */
  function send(key: string, body: string): void {
    const room = roomOfKey(key);
    const base = { cid: randomId(), body, createdAt: Date.now() };
    const entry: OutboxEntry = room !== undefined ? { ...base, room } : { ...base, to: key };
    state.outbox.push(entry);
    persist();
    store.addPending(entry);
    transmit(entry.cid);
  }

  function transmit(cid: string): void {
    const m = store.pendingMessage(cid);
    clearSendTimers(cid);
    if (!m || !isRegistered) return; // resent on the next register
    const frame: ClientFrame =
      m.room !== undefined ? { type: 'send', id: cid, room: m.room, body: m.body } : { type: 'send', id: cid, to: m.to ?? userId, body: m.body };
    // The server closes the socket (1009) on an oversized frame: refuse it here instead.
    if (utf8Bytes(JSON.stringify(frame)) > DEFAULT_MAX_FRAME_BYTES) {
      failSend(cid, `Too large to send: a frame may carry at most ${DEFAULT_MAX_FRAME_BYTES / 1024} KiB.`, false);
      return;
    }
    if (!sendRaw(frame)) return;
    ackTimers.set(
      cid,
      setTimeout(() => {
        ackTimers.delete(cid);
        transmit(cid);
      }, ACK_TIMEOUT_MS),
    );
  }

  function resendLater(cid: string, delayMs: number): void {
    clearSendTimers(cid);
    resendTimers.set(
      cid,
      setTimeout(() => {
        resendTimers.delete(cid);
        transmit(cid);
      }, delayMs),
    );
  }

  function onSendError(cid: string, f: Extract<ServerFrame, { type: 'error' }>): void {
    clearSendTimers(cid);
    switch (f.code) {
      case ErrorCode.UNAVAILABLE: {
        // Outcome unknown: keep it pending and try again with the same id.
        const n = unavailableCount.get(cid) ?? 0;
        unavailableCount.set(cid, n + 1);
        resendLater(cid, backoffMs(n + 1));
        return;
      }
      case ErrorCode.RATE_LIMITED:
        resendLater(cid, Math.max(100, f.retryAfterMs ?? 1_000));
        return;
      case ErrorCode.UNAUTHORIZED:
        // Not registered (any more): the next register resends it.
        return;
      default:
        // internal: the user decides (Retry button). bad_request, too_large, forbidden, not_found:
        // the same message would be refused again, so no Retry; the text says what to change.
        failSend(cid, f.message || describeCode(f.code), f.code === ErrorCode.INTERNAL);
    }
  }

  function failSend(cid: string, message: string, retryable: boolean): void {
    clearSendTimers(cid);
    unavailableCount.delete(cid);
    store.fail(cid, message, retryable);
    dropFromOutbox(cid);
  }

  /** A failed message sent again by hand, with its same id. */
  function retry(cid: string): void {
    const m = store.retry(cid);
    if (!m) return;
    if (!state.outbox.some((e) => e.cid === cid)) {
      const base = { cid, body: m.body, createdAt: m.createdAt };
      state.outbox.push(m.room !== undefined ? { ...base, room: m.room } : { ...base, to: m.to ?? userId });
      persist();
    }
    transmit(cid);
  }

  function clearSendTimers(cid: string): void {
    clearTimeout(ackTimers.get(cid));
    ackTimers.delete(cid);
    clearTimeout(resendTimers.get(cid));
    resendTimers.delete(cid);
  }

  function dropFromOutbox(cid: string): void {
    const i = state.outbox.findIndex((e) => e.cid === cid);
    if (i >= 0) {
      state.outbox.splice(i, 1);
      persist();
    }
  }

  return {
    userId,
    start,
    stop,
    reconnectNow,
    send,
    retry,
    openConversation,
    loadOlder: (key: string) => loadHistory(key, true),
    createRoom,
    addMember,
    removeMember,
    leaveRoom,
    syncNow,
    snapshot: () => ({
      status: status.kind,
      userId,
      instanceId,
      peer: current,
      cursor: state.cursor,
      syncIntervalMs,
      tokenExp,
      isRegistered,
      reconnectAt: status.kind === 'reconnecting' ? status.at : undefined,
      offlineReason: status.kind === 'offline' ? status.reason : undefined,
      pending: store.pending().length,
      messages: store.messageCount(),
    }),
  };
}

function describeCode(code: string): string {
  switch (code) {
    case ErrorCode.RATE_LIMITED:
      return 'Rate limited';
    case ErrorCode.TOO_LARGE:
      return 'Too large';
    case ErrorCode.UNAVAILABLE:
      return 'Server unavailable';
    case ErrorCode.UNAUTHORIZED:
      return 'Not authorized';
    case ErrorCode.BAD_REQUEST:
      return 'Bad request';
    case ErrorCode.FORBIDDEN:
      return 'Forbidden';
    case ErrorCode.NOT_FOUND:
      return 'Not found';
    default:
      return 'Server error';
  }
}
