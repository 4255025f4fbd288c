/**
 * A resilient SimpleChat client for Node (integrations, load tools, the fault
 * suite), following the client rules of PROTOCOL.md:
 *
 * - every send keeps its `id` until acked: unacked sends are resent with the
 *   same id after a reconnect, after `unavailable`/`internal` (with backoff),
 *   after `rate_limited` (after retryAfterMs), and when no answer came within
 *   ackTimeoutMs; the server answers a resend with the first msgId;
 * - reconnects with jittered exponential backoff, moving on to the next URL of
 *   `urls` when a connection cannot be opened, drops before registering,
 *   stops answering (ping, sync: a hung instance), or closes with 1001 / 1013;
 * - after every (re)register, `sync`s from the saved cursor (not the one in
 *   `registered`) and repeats while `more`; also on `sync.hint` and every
 *   `syncIntervalMs` while connected;
 * - shows each msgId once (a bounded set of recently seen ids);
 * - every wait is bounded: the open, `registered`, each `sync` answer, each
 *   ack (then resent), and a WebSocket ping the server must answer.
 */
import WebSocket from 'ws';
import type { AnyServerFrame } from './client';
import { backoffMs } from './time';
import { CloseCode, DEFAULT_SYNC_INTERVAL_MS, ErrorCode, SYNC_LIMIT, type ClientFrame, type WireMessage } from './wire';

export interface ChatClientOptions {
  /** one instance (ws://host:port/ws) */
  url?: string;
  /** several instances: the client starts at the first and moves on when one fails */
  urls?: readonly string[];
  /** called before every connection attempt: a fresh (or cached, unexpired) JWT for the user */
  getToken(): string | Promise<string>;
  /** the saved cursor to sync from; without it the cursor of the first `registered` is taken */
  cursor?: string;
  /** overrides the server's syncIntervalMs */
  syncIntervalMs?: number;
  /** messages per `sync` request (1-500) */
  syncLimit?: number;
  /** first reconnect delay; doubles up to maxBackoffMs, with jitter */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** bound of the open, `registered` and each `sync` answer */
  requestTimeoutMs?: number;
  /** a send without any answer in this time is sent again (same id) */
  ackTimeoutMs?: number;
  /** WebSocket ping period; no pong by the next ping drops the connection (0: no pings) */
  pingIntervalMs?: number;
  /** how many msgIds are remembered to show each message once */
  dedupeCapacity?: number;
  /** extra headers of the upgrade request (e.g. Origin) */
  headers?: Record<string, string>;
  /** prefix of generated send ids (default: random) */
  idPrefix?: string;
  /** called with each new socket (tests, metrics) */
  onSocket?(ws: WebSocket): void;
}

export interface Ack {
  id: string;
  msgId: string;
  ts: number;
  /** the message's position in its conversation */
  seq: number;
}

export interface SendOptions {
  /** the idempotency key; generated when absent */
  id?: string;
}

export type ChatClientState = 'connecting' | 'registering' | 'ready' | 'waiting' | 'closed';

export interface ChatClientEvents {
  /** a message seen for the first time, live (`source: 'live'`) or through sync */
  message: (message: WireMessage, source: 'live' | 'sync') => void;
  /** the first ack of a send */
  ack: (ack: Ack & { to: string; attempts: number }) => void;
  /** a send the server refused for good (bad_request, too_large, unauthorized) */
  rejected: (send: { id: string; to: string; code: string; message: string }) => void;
  registered: (info: { userId: string; instanceId: string; url: string; cursor?: string }) => void;
  disconnected: (info: { code: number; reason: string; url: string }) => void;
  /** a sync chain finished: everything stored up to `cursor` has been seen */
  synced: (cursor: string) => void;
  /** every frame from the server, parsed (observability, tests) */
  frame: (frame: AnyServerFrame) => void;
  state: (state: ChatClientState) => void;
}

export interface ChatClient {
  /** Sends a message to a user (or `{ room }`) and resolves with its ack, resending as needed; rejects only when refused or closed. */
  send(to: string | { room: string }, body: string, options?: SendOptions): Promise<Ack>;
  /** Starts a sync chain now (coalesced with one under way). */
  sync(): void;
  on<E extends keyof ChatClientEvents>(event: E, listener: ChatClientEvents[E]): () => void;
  /** sends not acked yet */
  pending(): number;
  /** resolves once no send is pending, or rejects after timeoutMs */
  idle(timeoutMs: number): Promise<void>;
  /** the saved cursor (the last one a sync answer gave) */
  readonly cursor: string | undefined;
  readonly state: ChatClientState;
  readonly userId: string | undefined;
  readonly instanceId: string | undefined;
  /** URL of the current (or last) connection */
  readonly url: string;
  hasSeen(msgId: string): boolean;
  /** Stops reconnecting, rejects pending sends with ChatClientClosedError, closes the socket. */
  close(): Promise<void>;
}

export class ChatClientClosedError extends Error {
  constructor() {
    super('chat client closed');
    this.name = 'ChatClientClosedError';
  }
}

export class SendRejectedError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'SendRejectedError';
  }
}

type Listener = (...args: unknown[]) => void;

interface PendingSend {
  id: string;
  /** the user, or the room */
  to: string;
  isRoom: boolean;
  body: string;
  attempts: number;
  resolve(ack: Ack): void;
  reject(err: Error): void;
  promise: Promise<Ack>;
  /** resend or ack-timeout timer */
  timer?: NodeJS.Timeout;
}

const DEFAULTS = {
  syncLimit: SYNC_LIMIT.max,
  minBackoffMs: 200,
  maxBackoffMs: 10_000,
  requestTimeoutMs: 15_000,
  ackTimeoutMs: 15_000,
  pingIntervalMs: 15_000,
  dedupeCapacity: 50_000,
  syncIntervalMs: DEFAULT_SYNC_INTERVAL_MS,
} as const;
/** a connection that stayed registered this long resets the backoff */
const STABLE_AFTER_MS = 5_000;
/** resend delay after `unavailable` / `internal`, doubling per attempt up to the cap */
const RETRY_BASE_MS = 250;
const RETRY_MAX_MS = 5_000;

function isFrame(value: unknown): value is AnyServerFrame {
  return typeof value === 'object' && value !== null && typeof (value as { type?: unknown }).type === 'string';
}

function isWireMessage(value: unknown): value is WireMessage {
  const m = value as Partial<WireMessage> | null;
  return typeof m === 'object' && m !== null && typeof m.msgId === 'string' && typeof m.from === 'string' && (typeof m.to === 'string') !== (typeof m.room === 'string') && typeof m.body === 'string' && typeof m.ts === 'number' && typeof m.seq === 'number';
}

export function createChatClient(options: ChatClientOptions): ChatClient {
  const urls = options.urls?.length ? [...options.urls] : options.url ? [options.url] : [];
  if (urls.length === 0) throw new Error('createChatClient needs url or urls');
  const o = { ...DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as typeof DEFAULTS & ChatClientOptions;
  const idPrefix = options.idPrefix ?? `c${Math.random().toString(36).slice(2, 10)}`;

  const listeners = new Map<keyof ChatClientEvents, Set<Listener>>();
  const pending = new Map<string, PendingSend>();
  const seen = new Set<string>();
  let idleWaiters: (() => void)[] = [];

  let state: ChatClientState = 'waiting';
  let urlIndex = 0;
  let attempt = 0;
  let ws: WebSocket | undefined;
  /** bumped for every socket: late events of an abandoned socket are ignored */
  let gen = 0;
  let cursor = options.cursor;
  let userId: string | undefined;
  let instanceId: string | undefined;
  let syncIntervalMs = options.syncIntervalMs ?? DEFAULTS.syncIntervalMs;
  let sendSeq = 0;
  let reqSeq = 0;
  let registeredAt = 0;

  let reconnectTimer: NodeJS.Timeout | undefined;
  let openTimer: NodeJS.Timeout | undefined;
  let syncTimer: NodeJS.Timeout | undefined;
  let pingTimer: NodeJS.Timeout | undefined;
  let isAlive = true;
  let isUnresponsive = false;
  let syncReq: { id: string; timer: NodeJS.Timeout } | undefined;
  let isSyncAgain = false;
  let closing: Promise<void> | undefined;

  function emit<E extends keyof ChatClientEvents>(event: E, ...args: Parameters<ChatClientEvents[E]>): void {
    const set = listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch {
        // a listener's bug must not break the connection logic
      }
    }
  }

  function setState(s: ChatClientState): void {
    if (state === s) return;
    state = s;
    emit('state', s);
  }

  function isOpen(): boolean {
    return ws !== undefined && ws.readyState === WebSocket.OPEN;
  }

  function write(frame: ClientFrame): boolean {
    if (!ws || !isOpen()) return false;
    ws.send(JSON.stringify(frame));
    return true;
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
    if (remember(message.msgId)) emit('message', message, source);
  }

  // ---- connection ------------------------------------------------------------

  function connect(): void {
    reconnectTimer = undefined;
    if (state === 'closed') return;
    const myGen = ++gen;
    isUnresponsive = false;
    const url = urls[urlIndex % urls.length] as string;
    setState('connecting');
    let socket: WebSocket;
    try {
      socket = new WebSocket(url, { headers: options.headers, handshakeTimeout: o.requestTimeoutMs });
    } catch {
      scheduleReconnect(true);
      return;
    }
    ws = socket;
    options.onSocket?.(socket);
    // Bounds the open and the register answer together.
    openTimer = setTimeout(() => {
      if (myGen === gen && state !== 'ready') socket.terminate();
    }, o.requestTimeoutMs * 2);
    socket.on('error', () => undefined);
    socket.on('open', () => {
      if (myGen !== gen) return;
      void register(myGen, socket);
    });
    socket.on('pong', () => {
      if (myGen === gen) isAlive = true;
    });
    socket.on('message', (data, isBinary) => {
      if (myGen !== gen || isBinary) return;
      let frame: unknown;
      try {
        frame = JSON.parse(data.toString());
      } catch {
        return;
      }
      if (isFrame(frame)) onFrame(frame, url);
    });
    socket.on('close', (code, reason) => {
      if (myGen !== gen) return;
      onClosed(code, reason.toString(), url);
    });
  }

  async function register(myGen: number, socket: WebSocket): Promise<void> {
    let token: string;
    try {
      token = await options.getToken();
    } catch {
      if (myGen === gen) socket.terminate();
      return;
    }
    if (myGen !== gen || socket.readyState !== WebSocket.OPEN) return;
    setState('registering');
    socket.send(JSON.stringify({ type: 'register', token } satisfies ClientFrame));
  }

  function onRegistered(frame: AnyServerFrame, url: string): void {
    if (openTimer) clearTimeout(openTimer);
    openTimer = undefined;
    userId = typeof frame.userId === 'string' ? frame.userId : userId;
    instanceId = typeof frame.instanceId === 'string' ? frame.instanceId : undefined;
    if (options.syncIntervalMs === undefined && typeof frame.syncIntervalMs === 'number' && frame.syncIntervalMs > 0) syncIntervalMs = frame.syncIntervalMs;
    // The first cursor ever is the starting point; afterwards the saved one wins (nothing in between is missed).
    if (cursor === undefined && typeof frame.cursor === 'string') cursor = frame.cursor;
    registeredAt = Date.now();
    setState('ready');
    emit('registered', { userId: userId ?? '', instanceId: instanceId ?? '', url, ...(typeof frame.cursor === 'string' ? { cursor: frame.cursor } : {}) });
    for (const p of pending.values()) transmit(p);
    startTimers();
    startSync();
  }

  function onClosed(code: number, reason: string, url: string): void {
    stopConnectionTimers();
    ws = undefined;
    const wasReady = state === 'ready';
    if (state === 'closed') return;
    emit('disconnected', { code, reason, url });
    if (wasReady && Date.now() - registeredAt >= STABLE_AFTER_MS) attempt = 0;
    // 1001: the instance is going away; 1013: overloaded; no answer, or a drop before registering: down or hung.
    const moveOn = code === CloseCode.GOING_AWAY || code === CloseCode.TRY_AGAIN_LATER || !wasReady || isUnresponsive;
    scheduleReconnect(moveOn);
  }

  function scheduleReconnect(moveOn: boolean): void {
    if (state === 'closed' || reconnectTimer) return;
    setState('waiting');
    if (moveOn) urlIndex = (urlIndex + 1) % urls.length;
    // Right after a good connection drops, try at once (on another instance when there is one).
    const delay = attempt === 0 ? Math.round(Math.random() * o.minBackoffMs) : backoffMs(attempt, o.minBackoffMs, o.maxBackoffMs);
    attempt++;
    reconnectTimer = setTimeout(connect, delay);
  }

  /** The connection stopped answering (ping, sync): presume the instance hung and try the next one. */
  function dropConnection(): void {
    isUnresponsive = true;
    // terminate() emits 'close' (code 1006), which reconnects.
    ws?.terminate();
  }

  function startTimers(): void {
    if (o.pingIntervalMs > 0) {
      isAlive = true;
      pingTimer = setInterval(() => {
        if (!isAlive) {
          dropConnection();
          return;
        }
        isAlive = false;
        try {
          ws?.ping();
        } catch {
          // closing already
        }
      }, o.pingIntervalMs);
    }
    syncTimer = setInterval(() => startSync(), syncIntervalMs);
  }

  function stopConnectionTimers(): void {
    if (openTimer) clearTimeout(openTimer);
    if (pingTimer) clearInterval(pingTimer);
    if (syncTimer) clearInterval(syncTimer);
    openTimer = pingTimer = syncTimer = undefined;
    if (syncReq) clearTimeout(syncReq.timer);
    syncReq = undefined;
    isSyncAgain = false;
    for (const p of pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.timer = undefined;
    }
  }

  // ---- frames ------------------------------------------------------------------

  function onFrame(frame: AnyServerFrame, url: string): void {
    emit('frame', frame);
    switch (frame.type) {
      case 'registered':
        return onRegistered(frame, url);
      case 'ack':
        return onAck(frame);
      case 'message':
        if (isWireMessage(frame)) deliver({ msgId: frame.msgId, from: frame.from, ...(frame.room === undefined ? { to: frame.to } : { room: frame.room }), body: frame.body, ts: frame.ts, seq: frame.seq }, 'live');
        return;
      case 'sync':
        return onSyncAnswer(frame);
      case 'sync.hint':
        return startSync();
      case 'error':
        return onError(frame);
    }
  }

  function onAck(frame: AnyServerFrame): void {
    if (typeof frame.id !== 'string' || typeof frame.msgId !== 'string' || typeof frame.ts !== 'number' || typeof frame.seq !== 'number') return;
    const p = pending.get(frame.id);
    if (!p) return; // a late answer to a resend: the first ack already settled it
    if (p.timer) clearTimeout(p.timer);
    pending.delete(p.id);
    const ack: Ack = { id: p.id, msgId: frame.msgId, ts: frame.ts, seq: frame.seq };
    // The sender's other connections get the message live; this one shows it from its ack.
    remember(frame.msgId);
    p.resolve(ack);
    emit('ack', { ...ack, to: p.to, attempts: p.attempts });
    if (pending.size === 0 && idleWaiters.length) {
      const waiters = idleWaiters;
      idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  function onError(frame: AnyServerFrame): void {
    const id = typeof frame.id === 'string' ? frame.id : undefined;
    if (syncReq && id === syncReq.id) {
      // storage unavailable or a bad cursor: try again at the next hint or interval
      clearTimeout(syncReq.timer);
      syncReq = undefined;
      isSyncAgain = false;
      return;
    }
    const p = id === undefined ? undefined : pending.get(id);
    if (!p) return;
    const code = String(frame.code);
    if (code === ErrorCode.RATE_LIMITED) {
      const wait = typeof frame.retryAfterMs === 'number' ? frame.retryAfterMs : RETRY_BASE_MS;
      return retryLater(p, wait + Math.round(Math.random() * 50));
    }
    if (code === ErrorCode.UNAVAILABLE || code === ErrorCode.INTERNAL) {
      // The outcome is unknown: send again with the same id until acked.
      return retryLater(p, backoffMs(Math.min(p.attempts, 8), RETRY_BASE_MS, RETRY_MAX_MS));
    }
    // bad_request, too_large, unauthorized, forbidden...: resending cannot help.
    if (p.timer) clearTimeout(p.timer);
    pending.delete(p.id);
    const message = typeof frame.message === 'string' ? frame.message : code;
    p.reject(new SendRejectedError(code, message));
    emit('rejected', { id: p.id, to: p.to, code, message });
  }

  function retryLater(p: PendingSend, delayMs: number): void {
    if (p.timer) clearTimeout(p.timer);
    p.timer = setTimeout(() => {
      p.timer = undefined;
      if (pending.has(p.id)) transmit(p);
    }, delayMs);
  }

  /** Sends (or resends) one pending message on the current connection, if registered. */
  function transmit(p: PendingSend): void {
    if (state !== 'ready') return; // sent after the next register
    if (p.timer) clearTimeout(p.timer);
    p.attempts++;
    write(p.isRoom ? { type: 'send', id: p.id, room: p.to, body: p.body } : { type: 'send', id: p.id, to: p.to, body: p.body });
    // No answer at all (a lost frame, a stuck instance): send again; the ping catches a dead socket.
    p.timer = setTimeout(() => {
      p.timer = undefined;
      if (pending.has(p.id)) transmit(p);
    }, o.ackTimeoutMs);
  }

  // ---- sync ----------------------------------------------------------------------

  function startSync(): void {
    if (state !== 'ready') return;
    if (syncReq) {
      isSyncAgain = true;
      return;
    }
    const id = `s${++reqSeq}`;
    const timer = setTimeout(() => {
      // No answer: presume the socket dead (a silent drop) and start over elsewhere.
      if (syncReq?.id === id) dropConnection();
    }, o.requestTimeoutMs);
    syncReq = { id, timer };
    write({ type: 'sync', id, limit: o.syncLimit, ...(cursor !== undefined ? { after: cursor } : {}) });
  }

  function onSyncAnswer(frame: AnyServerFrame): void {
    if (!syncReq || frame.id !== syncReq.id) return;
    clearTimeout(syncReq.timer);
    syncReq = undefined;
    const messages = Array.isArray(frame.messages) ? frame.messages : [];
    for (const m of messages) if (isWireMessage(m)) deliver(m, 'sync');
    if (typeof frame.cursor === 'string') cursor = frame.cursor;
    if (frame.more === true || isSyncAgain) {
      isSyncAgain = false;
      startSync();
    } else if (cursor !== undefined) emit('synced', cursor);
  }

  // ---- public ----------------------------------------------------------------------

  connect();

  return {
    send(to, body, sendOptions = {}) {
      if (state === 'closed') return Promise.reject(new ChatClientClosedError());
      const id = sendOptions.id ?? `${idPrefix}-${++sendSeq}`;
      const existing = pending.get(id);
      if (existing) return existing.promise; // the same id again: one message, one ack
      let p!: PendingSend;
      const promise = new Promise<Ack>((resolve, reject) => {
        const isRoom = typeof to !== 'string';
        p = { id, to: isRoom ? to.room : to, isRoom, body, attempts: 0, resolve, reject, promise: undefined as unknown as Promise<Ack> };
      });
      p.promise = promise;
      pending.set(id, p);
      transmit(p);
      return promise;
    },
    sync: startSync,
    on(event, listener) {
      let set = listeners.get(event);
      if (!set) listeners.set(event, (set = new Set()));
      const fn = listener as unknown as Listener;
      set.add(fn);
      return () => void set.delete(fn);
    },
    pending: () => pending.size,
    idle(timeoutMs) {
      if (pending.size === 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const done = () => {
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          idleWaiters = idleWaiters.filter((w) => w !== done);
          reject(new Error(`${pending.size} sends still unacked after ${timeoutMs} ms`));
        }, timeoutMs);
        idleWaiters.push(done);
      });
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
      return urls[urlIndex % urls.length] as string;
    },
    hasSeen: (msgId) => seen.has(msgId),
    close() {
      closing ??= (async () => {
        setState('closed');
        if (reconnectTimer) clearTimeout(reconnectTimer);
        stopConnectionTimers();
        const err = new ChatClientClosedError();
        for (const p of pending.values()) p.reject(err);
        pending.clear();
        const socket = ws;
        ws = undefined;
        gen++;
        if (!socket || socket.readyState === WebSocket.CLOSED) return;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            socket.terminate();
            resolve();
          }, 2000);
          socket.once('close', () => {
            clearTimeout(timer);
            resolve();
          });
          socket.close(1000, 'client closed');
        });
      })();
      return closing;
    },
  };
}
