/**
 * One signed-in user's session: the glue between the package's client
 * (@simplechat/client, served as ./esm/: connection, resends, sync, requests)
 * and this page's store and notices. It asks for history when a
 * conversation opens, lists the rooms on every register, learns the rooms it
 * sees messages of, and keeps the client's cursor and outbox in the page's
 * persisted state (localStorage).
 *
 * It also keeps what the chat screen shows around the messages: the
 * server's conversation list (asked on every register and again shortly
 * after messages and reads: ./conversations), presence of the users the page
 * shows (watched through the client, which watches again on every
 * connection), who is typing (./typing), and `read` receipts: sent while the
 * open conversation is visible (when it opens, as messages arrive, when the
 * page becomes visible again); `delivered` the client sends on its own. No
 * DOM here: the page renders the store and the status.
 */
import { createConversationBook, type Tick } from './conversations.js';
import type { UserState } from './persist.js';
import { keyOfRef, refOfKey, roomKey, roomOfKey, type ChatMessage, type ChatStore } from './store.js';
import { createTyping } from './typing.js';
import {
  CloseCode,
  ErrorCode,
  RequestError,
  SYNC_LIMIT,
  createChatClient,
  isFrameOf,
  randomId,
  type ChatClient,
  type ChatClientState,
  type InboundFrame,
  type OutboxEntry,
  type RoomInfo,
} from './esm/index.js';

/** Reconnect backoff of a page: gentler than a server-side integration's. */
const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 15_000;
/** the conversation list is asked again this long after the last message or read (changes coalesce) */
const LIST_AFTER_MS = 400;
/** while an answer does not count a read yet (stored through the broker), it is asked again this often... */
const LIST_BEHIND_RETRY_MS = 1000;
/** ...at most this many times in a row */
const LIST_BEHIND_TRIES = 10;
/** a read the client could not send yet (its marks are still being learned) is tried again this often... */
const READ_RETRY_MS = 250;
/** ...at most this many times in a row */
const READ_TRIES = 20;
/** users watched at most (the server allows 500 per connection) */
const MAX_WATCHED = 400;
/** "mute" without an end: the latest time the protocol takes */
const MUTED_FOREVER = Number.MAX_SAFE_INTEGER;

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
  /** Something drawn outside the store changed: presence, typing, marks, the server's counts. */
  onUpdate: () => void;
  /** A room this page asked to create exists. */
  onRoomCreated: (room: string) => void;
}

export type Session = ReturnType<typeof createSession>;

/** A failure worth telling the user about: not the connection going away (the request is simply asked again later). */
function reportable(err: unknown): RequestError | undefined {
  if (!(err instanceof RequestError)) return new RequestError('internal', errorText(err));
  return err.code === 'disconnected' || err.code === 'closed' ? undefined : err;
}

function isGone(err: RequestError): boolean {
  return err.code === ErrorCode.FORBIDDEN || err.code === ErrorCode.NOT_FOUND;
}

export function createSession(deps: SessionDeps) {
  const { userId, store, state, persist } = deps;

  let client: ChatClient | undefined;
  let status: Status = { kind: 'offline' };
  let stopReason: string | undefined;
  let current: string | undefined = state.peer;
  /** Rooms with a room.get on the way (one each at a time). */
  const roomGets = new Set<string>();
  let isListing = false;
  const book = createConversationBook(store);
  const typing = createTyping(deps.onUpdate);
  /** the page is visible (document.visibilityState): reads are sent only then */
  let isVisible = true;
  let readTimer: ReturnType<typeof setTimeout> | undefined;
  let readTries = 0;
  let listTimer: ReturnType<typeof setTimeout> | undefined;
  let isFetchingList = false;
  let isListAgain = false;
  let listBehindTries = 0;
  /** users asked of the client's presence, and the users the page last said it shows */
  const watched = new Set<string>();
  let shown: string[] = [];

  for (const entry of state.outbox) store.addPending(entry);

  function setStatus(s: Status): void {
    status = s;
    deps.onStatus(s);
  }

  /** The client, when registered: requests go out only then (nothing is queued; they are asked again on register). */
  function ready(): ChatClient | undefined {
    return client?.state === 'ready' ? client : undefined;
  }

  // ---- life cycle --------------------------------------------------------------

  function start(): void {
    if (client && client.state !== 'closed') return;
    stopReason = undefined;
    const c = createChatClient({
      url: deps.wsUrl,
      getToken: () => deps.fetchToken(userId),
      persistence: {
        load: () => ({ cursor: state.cursor, outbox: state.outbox }),
        save(saved) {
          state.cursor = saved.cursor;
          state.outbox = [...saved.outbox];
          persist();
        },
      },
      minBackoffMs: MIN_BACKOFF_MS,
      maxBackoffMs: MAX_BACKOFF_MS,
      syncLimit: SYNC_LIMIT.default,
    });
    client = c;
    c.on('state', (s) => onState(c, s));
    c.on('registered', onRegistered);
    c.on('disconnected', ({ code, reason }) => onDisconnected(code, reason));
    c.on('message', (m) => {
      store.merge([m]);
      if (m.room !== undefined) learnRoom(m.room);
      const key = m.room !== undefined ? roomKey(m.room) : m.from === userId ? (m.to ?? userId) : m.from;
      if (key === current) readCurrent();
      if (m.from === userId) return;
      typing.stopped(key, m.from);
      refreshList();
    });
    c.on('ack', (a) => {
      store.ack(a.id, a.msgId, a.ts, a.seq);
      readCurrent();
    });
    c.on('presence', deps.onUpdate);
    c.on('typing', (t) => {
      if (t.from !== userId) typing.typing(keyOfRef(t.conversation), t.from);
    });
    c.on('receipt', (r) => {
      // This user's read on another connection changes the counts.
      if (book.receipt(r, keyOfRef(r.conversation))) refreshList();
      deps.onUpdate();
    });
    c.on('rejected', (r) => store.fail(r.id, r.message));
    c.on('syncFailed', (err) => deps.onNotice(`Catch-up failed (${err.code}): ${err.message} Retrying shortly.`));
    c.on('tokenFailed', onTokenFailed);
    c.on('frame', onFrame);
  }

  function stop(reason?: string): void {
    stopReason = reason;
    roomGets.clear();
    isListing = false;
    typing.clear();
    watched.clear();
    const c = client;
    if (c && c.state !== 'closed') void c.close();
    else setStatus(reason === undefined ? { kind: 'offline' } : { kind: 'offline', reason });
  }

  function onState(c: ChatClient, s: ChatClientState): void {
    switch (s) {
      case 'connecting':
      case 'registering':
        return setStatus({ kind: 'connecting' });
      case 'ready':
        return setStatus({ kind: 'online', instanceId: c.instanceId ?? '?' });
      case 'waiting':
        return setStatus({ kind: 'reconnecting', at: c.reconnectAt ?? Date.now() });
      case 'closed':
        return setStatus(stopReason === undefined ? { kind: 'offline' } : { kind: 'offline', reason: stopReason });
    }
  }

  function onRegistered(): void {
    listRooms();
    fetchList();
    if (current !== undefined) openConversation(current);
    // After the client has watched again what it watched: only what it lacks is asked.
    queueMicrotask(() => watch(shown));
  }

  function onDisconnected(code: number, reason: string): void {
    roomGets.clear();
    isListing = false;
    switch (code) {
      case CloseCode.POLICY_VIOLATION:
      case CloseCode.TOO_LARGE: {
        // Reconnecting would only repeat what got the connection closed.
        const why = reason || (code === CloseCode.TOO_LARGE ? 'a frame was too large' : 'too many bad frames');
        const text = `Disconnected by the server (${code}): ${why}`;
        deps.onNotice(text);
        stop(text);
        return;
      }
      case CloseCode.TOO_MANY_CONNECTIONS:
        deps.onNotice(`Too many connections (${code})${reason ? `: ${reason}` : ''}; retrying later`);
        return;
    }
  }

  function onTokenFailed(err: unknown, during: 'connect' | 'refresh'): void {
    if (during === 'refresh') {
      deps.onNotice(err instanceof RequestError ? `Token refresh refused (${err.code}): ${err.message}` : `Token refresh failed: ${errorText(err)}`);
      return;
    }
    deps.onNotice(errorText(err));
    if (err instanceof TokenError && err.isFatal) stop(err.message);
  }

  /** Frames the client leaves to the page: room events, and errors that answer nothing pending. */
  function onFrame(f: InboundFrame): void {
    if (isFrameOf(f, 'room.event')) {
      if (store.applyRoomEvent(f)) getRoom(f.room);
      if (f.userId === userId) refreshList();
    } else if (isFrameOf(f, 'error')) {
      const wait = f.retryAfterMs !== undefined ? ` (retry in ${Math.ceil(f.retryAfterMs / 1000)} s)` : '';
      deps.onNotice(`${describeCode(f.code)}: ${f.message || f.code}${wait}`);
    }
  }

  // ---- history -----------------------------------------------------------------

  function loadHistory(key: string, isOlder = false): void {
    const c = ready();
    if (!c) return; // asked again on register
    const room = roomOfKey(key);
    // Room history is for current members only; a former member keeps what it saw.
    if (room !== undefined && store.room(room)?.isMember === false) return;
    const conv = store.conversation(key);
    if (conv.history === 'loading' || (!isOlder && conv.history === 'loaded')) return;
    const before = isOlder ? store.oldestMsgId(key) : undefined;
    if (isOlder && before === undefined) return;
    store.setHistory(key, 'loading');
    c.history(room !== undefined ? { room } : { with: key }, before === undefined ? {} : { before }).then(
      (page) => {
        store.merge(page.messages);
        store.setHistory(key, 'loaded', page.more);
        if (key === current) readCurrent();
      },
      (e: unknown) => {
        store.setHistory(key, 'none');
        const err = reportable(e);
        if (!err) return;
        if (room !== undefined && isGone(err)) store.setLeft(room);
        else deps.onNotice(`History of ${room !== undefined ? `room ${roomTitle(room)}` : `the chat with ${key}`} failed (${err.code}): ${err.message}`);
      },
    );
  }

  function openConversation(key: string): void {
    current = key;
    if (state.peer !== key) {
      state.peer = key;
      persist();
    }
    const room = roomOfKey(key);
    if (room !== undefined) {
      learnRoom(room);
      loadRoomMarks(room);
    }
    loadHistory(key);
    readCurrent();
  }

  /** The members' marks of a room, for the ticks of what was sent before this page was open. */
  function loadRoomMarks(room: string): void {
    const c = ready();
    if (!c || store.room(room)?.isMember === false) return; // asked again on register
    c.roomMarks(room).then(
      (marks) => {
        book.memberMarks(roomKey(room), marks);
        deps.onUpdate();
      },
      (e: unknown) => {
        const err = reportable(e);
        if (err && !isGone(err)) deps.onNotice(`Read marks of room ${roomTitle(room)} could not be loaded (${err.code}): ${err.message}`);
      },
    );
  }

  // ---- the conversation list and reads ----------------------------------------------

  /** Asks the server's list soon: changes close together share one request. */
  function refreshList(delayMs = LIST_AFTER_MS): void {
    listTimer ??= setTimeout(fetchList, delayMs);
  }

  function fetchList(): void {
    clearTimeout(listTimer);
    listTimer = undefined;
    const c = ready();
    if (!c) return; // asked again on register
    if (isFetchingList) {
      isListAgain = true;
      return;
    }
    isFetchingList = true;
    c.conversations().then(
      (page) => {
        isFetchingList = false;
        book.setLines(page.conversations);
        // The newest message of each line: the list's previews and order.
        store.merge(page.conversations.map((line) => line.last));
        readCurrent();
        deps.onUpdate();
        if (isListAgain) {
          isListAgain = false;
          refreshList();
        } else if (!book.isBehind()) listBehindTries = 0;
        else if (listBehindTries++ < LIST_BEHIND_TRIES) refreshList(LIST_BEHIND_RETRY_MS);
      },
      (e: unknown) => {
        isFetchingList = false;
        isListAgain = false;
        const err = reportable(e);
        if (err) deps.onNotice(`Could not list your conversations (${err.code}): ${err.message}`);
      },
    );
  }

  /** Sends `read` for the open conversation while the page is visible: up to what the client holds without a hole. */
  function readCurrent(isRetry = false): void {
    clearTimeout(readTimer);
    readTimer = undefined;
    if (!isRetry) readTries = 0;
    const c = ready();
    const key = current;
    if (!c || key === undefined || !isVisible) return;
    const room = roomOfKey(key);
    if (room !== undefined && store.room(room)?.isMember === false) return;
    const ref = refOfKey(key);
    const upTo = c.markRead(ref);
    if (upTo !== undefined) {
      if (book.read(key, upTo)) deps.onUpdate();
      refreshList();
    } else if (c.marksOf(ref).read > book.readMark(key) && readTries++ < READ_TRIES) {
      // The client is still learning its marks in this conversation (its first list answer): try again shortly.
      readTimer = setTimeout(() => readCurrent(true), READ_RETRY_MS);
    }
  }

  function setVisible(visible: boolean): void {
    isVisible = visible;
    if (visible) readCurrent();
  }

  // ---- presence and typing ------------------------------------------------------------

  /** Watches the users the page shows (and only them); the client watches them again on every connection. */
  function watch(users: readonly string[]): void {
    shown = [...new Set(users)].filter((u) => u !== userId).slice(0, MAX_WATCHED);
    const c = client;
    if (!c || c.state === 'closed') return;
    const want = new Set(shown);
    const gone = [...watched].filter((u) => !want.has(u));
    if (gone.length > 0) {
      for (const u of gone) watched.delete(u);
      c.unwatch(gone);
    }
    const fresh = shown.filter((u) => !watched.has(u));
    if (fresh.length === 0 || !ready()) return; // watched on register
    for (const u of fresh) watched.add(u);
    c.watch(fresh).then(deps.onUpdate, (e: unknown) => {
      // Not watched after all: tried again on the next register (not on every render: a refusal would repeat).
      for (const u of fresh) watched.delete(u);
      const err = reportable(e);
      if (err) deps.onNotice(`Could not watch who is online (${err.code}): ${err.message}`);
    });
  }

  /** The user is typing in a conversation (the client says so at most once a second). */
  function typingIn(key: string): void {
    const room = roomOfKey(key);
    if (room !== undefined && store.room(room)?.isMember === false) return;
    ready()?.typing(refOfKey(key));
  }

  function mute(key: string, isMuted: boolean): void {
    change(
      (c) => c.mute(refOfKey(key), isMuted ? MUTED_FOREVER : 0),
      () => {
        book.setMuted(key, isMuted);
        deps.onUpdate();
      },
      (err) => deps.onNotice(`Could not ${isMuted ? 'mute' : 'unmute'} the conversation (${err.code}): ${err.message}`),
    );
  }

  // ---- rooms --------------------------------------------------------------------

  function roomTitle(room: string): string {
    const name = store.room(room)?.name;
    return name !== undefined ? `"${name}"` : room;
  }

  function onRoomInfo(info: RoomInfo): void {
    store.setRoomInfo(info);
    // Just added (or just learned about): its history is now ours to load.
    if (current === roomKey(info.room)) loadHistory(current);
  }

  /** A room change asked for by the user: said when offline or refused. */
  function change<T>(run: (c: ChatClient) => Promise<T>, done: (result: T) => void, failed: (err: RequestError) => void): void {
    const c = ready();
    if (!c) {
      deps.onNotice('Not connected: try again once online.');
      return;
    }
    run(c).then(done, (e: unknown) => {
      const err = reportable(e);
      if (err) failed(err);
    });
  }

  function listRooms(): void {
    const c = ready();
    if (!c || isListing) return;
    isListing = true;
    c.listAllRooms().then(
      (rooms) => {
        isListing = false;
        store.setRoomSummaries(rooms);
        store.setRoomListComplete(new Set(rooms.map((r) => r.room)));
        const room = current !== undefined ? roomOfKey(current) : undefined;
        if (room !== undefined) learnRoom(room);
      },
      (e: unknown) => {
        isListing = false;
        const err = reportable(e);
        if (err) deps.onNotice(`Could not list your rooms (${err.code}): ${err.message}`);
      },
    );
  }

  function getRoom(room: string): void {
    const c = ready();
    if (!c || roomGets.has(room)) return;
    roomGets.add(room);
    c.getRoom(room).then(
      (info) => {
        roomGets.delete(room);
        onRoomInfo(info);
      },
      (e: unknown) => {
        roomGets.delete(room);
        const err = reportable(e);
        if (err && isGone(err)) store.setLeft(room);
      },
    );
  }

  /** Asks for a room's name and members when this page does not know them and may be a member. */
  function learnRoom(room: string): void {
    const r = store.room(room);
    if (r === undefined || (r.isMember !== false && (r.members === undefined || r.name === undefined))) getRoom(room);
  }

  function createRoom(name: string, members: string[]): void {
    change(
      (c) => c.createRoom(name, members),
      (info) => {
        onRoomInfo(info);
        deps.onRoomCreated(info.room);
      },
      (err) => deps.onNotice(`Could not create room "${name}" (${err.code}): ${err.message}`),
    );
  }

  function addMember(room: string, member: string): void {
    change(
      (c) => c.addMember(room, member),
      onRoomInfo,
      (err) => deps.onNotice(`Could not add ${member} to ${roomTitle(room)} (${err.code}): ${err.message}`),
    );
  }

  function removeMember(room: string, member: string): void {
    change(
      (c) => c.removeMember(room, member),
      onRoomInfo,
      (err) => deps.onNotice(`Could not remove ${member} from ${roomTitle(room)} (${err.code}): ${err.message}`),
    );
  }

  function leaveRoom(room: string): void {
    change(
      (c) => c.leaveRoom(room),
      () => store.setLeft(room),
      (err) => {
        if (isGone(err)) store.setLeft(room);
        else deps.onNotice(`Could not leave ${roomTitle(room)} (${err.code}): ${err.message}`);
      },
    );
  }

  // ---- sending ----------------------------------------------------------------

  /** Sends to a conversation: a peer's user id or a room key. The client resends it until acked, across reloads. */
  function send(key: string, body: string): void {
    const room = roomOfKey(key);
    const base = { id: randomId(), body, createdAt: Date.now() };
    const entry: OutboxEntry = room !== undefined ? { ...base, room } : { ...base, to: key };
    store.addPending(entry);
    if (client && client.state !== 'closed') {
      void client.send(room !== undefined ? { room } : key, body, { id: entry.id });
      return;
    }
    // Stopped: kept for the next start, which loads the outbox.
    state.outbox.push(entry);
    persist();
  }

  return {
    userId,
    start,
    stop,
    reconnectNow: () => client?.reconnectNow(),
    send,
    openConversation,
    loadOlder: (key: string) => loadHistory(key, true),
    createRoom,
    addMember,
    removeMember,
    leaveRoom,
    syncNow: () => client?.sync(),
    setVisible,
    watch,
    typing: typingIn,
    mute,
    unread: (key: string): number => book.unread(key),
    isMuted: (key: string): boolean => book.isMuted(key),
    tick: (m: ChatMessage, key: string): Tick | undefined => book.tick(m, key),
    presenceOf: (user: string) => client?.presenceOf(user),
    typists: (key: string): string[] => typing.who(key),
    snapshot: () => ({
      status: status.kind,
      userId,
      instanceId: client?.instanceId,
      peer: current,
      cursor: state.cursor,
      syncIntervalMs: client?.syncIntervalMs,
      tokenExp: client?.tokenExp,
      isRegistered: client?.state === 'ready',
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
