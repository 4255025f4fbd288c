/**
 * Client connections: upgrade checks, the register handshake, frame handling
 * per PROTOCOL.md (send/ack after confirm, history, sync, refresh), limits
 * (rate, bad frames, connections per user and address), token expiry, pings,
 * and draining on shutdown.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket, type RawData } from 'ws';
import {
  CloseCode,
  ErrorCode,
  frameIdOf,
  parseClientFrame,
  UnavailableError,
  errorMessage,
  randomToken,
  createLogThrottle,
  type ClientFrame,
  type ServerFrame,
  type WireMessage,
  type QueuedMessage,
  type Logger,
} from '@simplechat/shared';
import type { Auth } from './auth';
import type { Connection, ConnectionRegistry } from './connections';
import type { Discovery } from './discovery';
import { bodyDigest, type Idempotency } from './idempotency';
import type { PersistClient } from './persist-client';
import type { Publisher } from './publisher';
import type { Router } from './router';
import type { GatewayMetrics } from './metrics';
import { createTokenBucket, createWindowCounter, type TokenBucket } from './rate-limit';

export interface GatewayLimits {
  instanceId: string;
  maxFrameBytes: number;
  maxBodyChars: number;
  registerTimeoutMs: number;
  pingIntervalMs: number;
  syncIntervalMs: number;
  /** other instances may route by a lookup this old: hint new connections to sync once it has passed */
  discoveryCacheMs: number;
  rateLimitPerSec: number;
  rateLimitBurst: number;
  /** sends being accepted at once; beyond it new sends are answered rate_limited */
  maxPendingSends: number;
  maxConnectionsPerUser: number;
  maxConnectionsPerIp: number;
  maxBadFrames: number;
  trustProxy: boolean;
}

export interface GatewayDeps {
  limits: GatewayLimits;
  isOriginAllowed(origin: string | undefined): boolean;
  auth: Auth;
  registry: ConnectionRegistry;
  router: Router;
  discovery: Discovery;
  publisher: Publisher;
  idempotency: Idempotency;
  persist: PersistClient;
  nextId(now: number): string;
  log: Logger;
  metrics?: GatewayMetrics;
}

export interface Gateway {
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** sends sync.hint to these users' connections, or to every connection */
  hint(users?: readonly string[]): void;
  /** stop taking new work; resolves when in-flight frames are answered (or the deadline passes) */
  drain(deadlineMs: number): Promise<void>;
  closeAll(code: number, reason: string): void;
  stats(): { connections: number; sockets: number };
  close(): void;
}

/** History and sync entries are in the shape of a live `message` frame (PROTOCOL.md), type included. */
const asMessageFrame = (m: WireMessage): Extract<ServerFrame, { type: 'message' }> => ({ type: 'message', ...m });

const SYNC_HINT = JSON.stringify({ type: 'sync.hint' } satisfies ServerFrame);
const MAX_QUEUED_WHILE_REGISTERING = 100;
/** retry hint of a send shed because the instance is overloaded */
const OVERLOAD_RETRY_MS = 250;
/** at most one warning a minute while storage reads keep failing */
const STORAGE_FAILURE_LOG_INTERVAL_MS = 60_000;

/**
 * A page served by this instance itself (its /client) opening /ws: the Origin names the host
 * the request was sent to. Other sites' pages cannot send that Origin, so it needs no allowlist.
 */
function isSameOrigin(req: IncomingMessage): boolean {
  const { origin, host } = req.headers;
  if (!origin || !host) return false;
  try {
    return new URL(origin).host.toLowerCase() === host.toLowerCase();
  } catch {
    return false;
  }
}

function rejectUpgrade(socket: Duplex, status: number, text: string, message: string): void {
  const body = JSON.stringify({ error: message });
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

interface ConnState {
  conn: Connection;
  phase: 'new' | 'registering' | 'registered';
  alive: boolean;
  exp: number;
  expTimer?: NodeJS.Timeout;
  registerTimer?: NodeJS.Timeout;
  badFrames: { hit(now?: number): number };
  queued: { data: RawData; isBinary: boolean }[];
}

export function createGateway(deps: GatewayDeps): Gateway {
  const { limits } = deps;
  const log = deps.log.child({ component: 'gateway' });
  const { metrics } = deps;
  const wss = new WebSocketServer({ noServer: true, maxPayload: limits.maxFrameBytes, perMessageDeflate: false, clientTracking: false });
  const states = new Map<Connection, ConnState>();
  const perIp = new Map<string, number>();
  const buckets = new Map<string, { bucket: TokenBucket; refs: number }>();
  let draining = false;
  let inflight = 0;
  let pendingSends = 0;
  /** claims of users whose first connection here is registering, until SvDiscover has them */
  const claiming = new Map<string, Promise<boolean>>();
  /** the storage cursor read in flight, shared by every registration that starts meanwhile */
  let cursorRead: Promise<string | undefined> | undefined;
  let idleWaiters: (() => void)[] = [];
  const storageFailures = createLogThrottle(STORAGE_FAILURE_LOG_INTERVAL_MS);

  const pinger = setInterval(() => {
    for (const st of states.values()) {
      if (!st.alive) {
        st.conn.ws.terminate();
        continue;
      }
      st.alive = false;
      st.conn.ws.ping();
    }
  }, limits.pingIntervalMs);
  pinger.unref();

  function send(conn: Connection, frame: ServerFrame): void {
    deps.registry.send(conn, JSON.stringify(frame));
  }

  function sendError(conn: Connection, code: ErrorCode, message: string, id?: string, extra?: { retryAfterMs: number }): void {
    // Errors go out even while registering (conn.pending only holds deliveries).
    if (conn.closed) return;
    const frame: ServerFrame = { type: 'error', code, message, ...(id === undefined ? {} : { id }), ...extra };
    conn.ws.send(JSON.stringify(frame));
    metrics?.frameSent('{"type":"error"');
    metrics?.errorSent(code);
  }

  function close(conn: Connection, code: number, reason: string): void {
    if (conn.closed) return;
    conn.closed = true;
    metrics?.serverClosed(code);
    conn.ws.close(code, reason);
    setTimeout(() => conn.ws.terminate(), 2000).unref();
  }

  /**
   * The storage position for `registered`, read alongside the claim rather than after it, and
   * shared by the registrations that start while a read is in flight: a reconnect storm costs
   * a few reads, not one per connection. A position from a little earlier than this
   * registration only means a later sync returns messages the client may have seen (shown
   * once by msgId); it never skips one. undefined: storage unreachable, no cursor.
   */
  function readCursor(): Promise<string | undefined> {
    cursorRead ??= deps.persist
      .cursor()
      .then(
        (res) => res.cursor,
        (err: unknown) => {
          log.debug({ err: errorMessage(err) }, 'no cursor for registered: storage unreachable');
          return undefined;
        },
      )
      .finally(() => {
        cursorRead = undefined;
      });
    return cursorRead;
  }

  function remoteAddress(req: IncomingMessage): string {
    if (limits.trustProxy) {
      const fwd = req.headers['x-forwarded-for'];
      const first = (Array.isArray(fwd) ? fwd[0] : fwd)?.split(',')[0]?.trim();
      if (first) return first;
    }
    return req.socket.remoteAddress ?? 'unknown';
  }

  function userBucket(userId: string): TokenBucket {
    let b = buckets.get(userId);
    if (!b) buckets.set(userId, (b = { bucket: createTokenBucket(limits.rateLimitPerSec, limits.rateLimitBurst), refs: 0 }));
    b.refs++;
    return b.bucket;
  }

  function releaseBucket(userId: string): void {
    const b = buckets.get(userId);
    if (b && --b.refs <= 0) buckets.delete(userId);
  }

  function badFrame(st: ConnState, message: string, id?: string): void {
    const code = st.phase === 'registered' ? ErrorCode.BAD_REQUEST : ErrorCode.UNAUTHORIZED;
    const text = st.phase === 'registered' ? message : `${message}; register first with {"type":"register","token":"<JWT>"}`;
    sendError(st.conn, code, text, id);
    if (st.badFrames.hit() > limits.maxBadFrames) close(st.conn, CloseCode.POLICY_VIOLATION, 'too many bad frames');
  }

  function armExpiry(st: ConnState): void {
    if (st.expTimer) clearTimeout(st.expTimer);
    const delay = st.exp * 1000 - Date.now();
    st.expTimer = setTimeout(
      () => {
        if (st.exp * 1000 > Date.now()) return armExpiry(st); // long tokens: re-arm past the timer limit
        sendError(st.conn, ErrorCode.UNAUTHORIZED, 'token expired; get a new token and reconnect');
        close(st.conn, CloseCode.UNAUTHORIZED, 'token expired');
      },
      Math.max(0, Math.min(delay, 2 ** 31 - 1)),
    );
    st.expTimer.unref();
  }

  async function onRegister(st: ConnState, frame: Extract<ClientFrame, { type: 'register' }>): Promise<void> {
    const { conn } = st;
    st.phase = 'registering';
    const verified = await deps.auth.verify(frame.token);
    if (conn.closed) return;
    if (!verified.ok) {
      metrics?.connectionRefused('unauthorized');
      sendError(conn, ErrorCode.UNAUTHORIZED, verified.reason, frame.id);
      close(conn, CloseCode.UNAUTHORIZED, 'unauthorized');
      return;
    }
    const { userId, exp } = verified.identity;
    if ((deps.registry.of(userId)?.size ?? 0) >= limits.maxConnectionsPerUser) {
      metrics?.connectionRefused('user_limit');
      sendError(conn, ErrorCode.RATE_LIMITED, `too many connections for user ${userId} on this instance (limit ${limits.maxConnectionsPerUser}); close some tabs`, frame.id, { retryAfterMs: 5000 });
      close(conn, CloseCode.TOO_MANY_CONNECTIONS, 'too many connections');
      return;
    }
    if (st.registerTimer) clearTimeout(st.registerTimer);
    conn.userId = userId;
    conn.pending = [];
    st.exp = exp;
    deps.registry.add(conn);
    bucketOf.set(conn, userBucket(userId));
    const isFirstHere = deps.registry.of(userId)?.size === 1;
    // Claim before `registered`: from then on other instances route this user's messages here.
    // A further connection of the user waits for a claim still on its way, like the first one.
    let claim = claiming.get(userId);
    if (isFirstHere) {
      const mine = deps.discovery.claimChanged(userId);
      claiming.set(userId, mine);
      void mine.finally(() => {
        if (claiming.get(userId) === mine) claiming.delete(userId);
      });
      claim = mine;
    }
    const cursorOf = readCursor();
    const claimed = claim ? await claim : true;
    const cursor = await cursorOf;
    if (conn.closed) return;
    const registered: ServerFrame = { type: 'registered', ...(frame.id ? { id: frame.id } : {}), userId, instanceId: limits.instanceId, ...(cursor ? { cursor } : {}), syncIntervalMs: limits.syncIntervalMs };
    conn.ws.send(JSON.stringify(registered));
    metrics?.frameSent('{"type":"registered"');
    st.phase = 'registered';
    const pending = conn.pending;
    conn.pending = null;
    for (const f of pending) deps.registry.send(conn, f);
    if (!claimed) deps.registry.send(conn, SYNC_HINT);
    else if (isFirstHere && limits.discoveryCacheMs > 0) {
      // Instances that looked this user up just before the claim may skip it until their cache
      // entry expires; one sync after that picks up anything they sent meanwhile.
      setTimeout(() => deps.registry.send(conn, SYNC_HINT), limits.discoveryCacheMs + 100).unref();
    }
    armExpiry(st);
    log.debug({ connId: conn.id, userId }, 'registered');
    const queued = st.queued;
    st.queued = [];
    for (const q of queued) onMessage(st, q.data, q.isBinary);
  }

  const bucketOf = new WeakMap<Connection, TokenBucket>();

  async function onSend(st: ConnState, frame: Extract<ClientFrame, { type: 'send' }>): Promise<void> {
    const { conn } = st;
    const from = conn.userId as string;
    const receivedAt = performance.now();
    const wait = bucketOf.get(conn)?.take() ?? 0;
    if (wait > 0) {
      metrics?.rateLimited();
      sendError(conn, ErrorCode.RATE_LIMITED, `sending too fast (limit ${limits.rateLimitPerSec}/s); retry after ${wait} ms with the same id`, frame.id, { retryAfterMs: wait });
      return;
    }
    if (pendingSends >= limits.maxPendingSends) {
      // Overloaded: shed now, cheaply, rather than queue sends into confirm timeouts.
      metrics?.overloaded();
      sendError(conn, ErrorCode.RATE_LIMITED, `this instance is overloaded (${pendingSends} sends in progress); retry after ${OVERLOAD_RETRY_MS} ms with the same id`, frame.id, { retryAfterMs: OVERLOAD_RETRY_MS });
      return;
    }
    pendingSends++;
    try {
      await accept(conn, from, frame, receivedAt);
    } finally {
      pendingSends--;
    }
  }

  async function accept(conn: Connection, from: string, frame: Extract<ClientFrame, { type: 'send' }>, receivedAt: number): Promise<void> {
    const now = Date.now();
    const res = await deps.idempotency.reserve(from, frame.id, { msgId: deps.nextId(now), ts: now, to: frame.to, digest: bodyDigest(frame.body) });
    const to = res.to;
    // Live delivery runs beside the publish; a retry is delivered again (clients dedupe by msgId).
    // A resend of the id with another body is the first message (PROTOCOL.md): its body is not
    // delivered. It is still published under the first msgId: storage keeps the first copy when
    // that was queued (it is ahead in the queue; the insert skips a known id), and this one only
    // when the first attempt never reached the broker, so that an ack always means stored.
    if (res.sameBody) {
      const message = JSON.stringify({ type: 'message', msgId: res.msgId, from, to, body: frame.body, ts: res.ts } satisfies ServerFrame);
      if (to === from) deps.router.route(message, [from]);
      else deps.router.route(message, [to, from], conn);
    }
    const queued: QueuedMessage = { id: res.msgId, from, to, body: frame.body, ts: res.ts, clientId: frame.id };
    await deps.publisher.publish(queued);
    send(conn, { type: 'ack', id: frame.id, msgId: res.msgId, ts: res.ts });
    metrics?.acked((performance.now() - receivedAt) / 1000);
  }

  async function onRefresh(st: ConnState, frame: Extract<ClientFrame, { type: 'refresh' }>): Promise<void> {
    const verified = await deps.auth.verify(frame.token);
    if (!verified.ok) return sendError(st.conn, ErrorCode.UNAUTHORIZED, `refresh refused: ${verified.reason}; the connection keeps its current token`, frame.id);
    if (verified.identity.userId !== st.conn.userId) return sendError(st.conn, ErrorCode.UNAUTHORIZED, 'refresh refused: the token is for another user', frame.id);
    st.exp = verified.identity.exp;
    armExpiry(st);
    send(st.conn, { type: 'refreshed', ...(frame.id ? { id: frame.id } : {}), exp: st.exp });
  }

  /**
   * A read from SvPersist. When it fails, the client is told what to do, not where SvPersist
   * runs (that goes to the log, at most once a minute while it keeps failing).
   */
  async function fromStorage<T>(what: 'history' | 'sync', read: () => Promise<T>): Promise<T> {
    try {
      const res = await read();
      const failedReads = storageFailures.end();
      if (failedReads > 0) log.info({ failedReads }, 'SvPersist answers history and sync reads again');
      return res;
    } catch (err) {
      if (!(err instanceof UnavailableError)) throw err;
      if (storageFailures.shouldLog()) log.warn({ err: err.message, failedReads: storageFailures.count }, 'history and sync reads from SvPersist fail (see err); clients are told to retry later');
      throw new UnavailableError(`message storage unavailable (${what} could not be read); retry later`, { cause: err });
    }
  }

  async function handle(st: ConnState, frame: ClientFrame): Promise<void> {
    const { conn } = st;
    const userId = conn.userId as string;
    switch (frame.type) {
      case 'register':
        return sendError(conn, ErrorCode.BAD_REQUEST, 'already registered; open a new connection to change user', frame.id);
      case 'send':
        return onSend(st, frame);
      case 'refresh':
        return onRefresh(st, frame);
      case 'history': {
        const res = await fromStorage('history', () => deps.persist.history(userId, frame.with, frame.before, frame.limit));
        return send(conn, { type: 'history', ...(frame.id ? { id: frame.id } : {}), with: frame.with, messages: res.messages.map(asMessageFrame), more: res.more });
      }
      case 'sync': {
        const res = await fromStorage('sync', () => deps.persist.sync(userId, frame.after, frame.limit));
        return send(conn, { type: 'sync', ...(frame.id ? { id: frame.id } : {}), messages: res.messages.map(asMessageFrame), cursor: res.cursor, more: res.more });
      }
    }
  }

  function track(st: ConnState, work: Promise<void>, id: string | undefined): void {
    inflight++;
    work
      .catch((err: unknown) => {
        if (err instanceof UnavailableError) sendError(st.conn, ErrorCode.UNAVAILABLE, err.message, id);
        else {
          log.error({ err, connId: st.conn.id }, 'frame handling failed');
          sendError(st.conn, ErrorCode.INTERNAL, 'internal error; retry later', id);
        }
      })
      .finally(() => {
        if (--inflight === 0 && idleWaiters.length) {
          const w = idleWaiters;
          idleWaiters = [];
          for (const f of w) f();
        }
      });
  }

  function onMessage(st: ConnState, data: RawData, isBinary: boolean): void {
    if (st.conn.closed) return;
    if (st.phase === 'registering') {
      // Frames pipelined right after register are answered once registered.
      if (st.queued.length < MAX_QUEUED_WHILE_REGISTERING) st.queued.push({ data, isBinary });
      else badFrame(st, 'too many frames before registered', isBinary ? undefined : frameIdOf(data.toString()));
      return;
    }
    if (isBinary) {
      metrics?.frameReceived('binary');
      return badFrame(st, 'binary frames are not supported; send JSON text frames');
    }
    const parsed = parseClientFrame(data.toString(), { maxBodyChars: limits.maxBodyChars });
    metrics?.frameReceived(parsed.ok ? parsed.frame.type : 'invalid');
    if (!parsed.ok) {
      if (st.phase === 'new' && parsed.message.startsWith('register:') && parsed.fields?.includes('token')) {
        // A register frame without a usable token: same as a bad token. Any other bad field
        // gets `unauthorized` and leaves the connection open for a correct register.
        sendError(st.conn, ErrorCode.UNAUTHORIZED, parsed.message, parsed.id);
        return close(st.conn, CloseCode.UNAUTHORIZED, 'unauthorized');
      }
      if (st.phase === 'registered' && parsed.message.startsWith('refresh:') && parsed.fields?.includes('token')) {
        // A refresh without a usable token is a bad token (PROTOCOL.md): refused, identity kept.
        return sendError(st.conn, ErrorCode.UNAUTHORIZED, `refresh refused: ${parsed.message.slice('refresh: '.length)}; the connection keeps its current token`, parsed.id);
      }
      if (parsed.code === ErrorCode.TOO_LARGE && st.phase === 'registered') return sendError(st.conn, parsed.code, parsed.message, parsed.id);
      return badFrame(st, parsed.message, parsed.id);
    }
    const frame = parsed.frame;
    if (st.phase === 'new') {
      if (frame.type !== 'register') return badFrame(st, `'${frame.type}' before register`, frame.id);
      return track(st, onRegister(st, frame), frame.id);
    }
    if (draining && frame.type !== 'register') return sendError(st.conn, ErrorCode.UNAVAILABLE, 'this instance is shutting down; reconnect and retry with the same id', frame.id);
    track(st, handle(st, frame), frame.id);
  }

  function onConnection(ws: WebSocket, remote: string): void {
    const conn: Connection = { id: randomToken(6), ws, remote, userId: undefined, pending: null, closed: false };
    metrics?.connectionOpened();
    const st: ConnState = { conn, phase: 'new', alive: true, exp: 0, badFrames: createWindowCounter(60_000), queued: [] };
    states.set(conn, st);
    st.registerTimer = setTimeout(() => {
      if (st.phase !== 'new' || conn.closed) return;
      metrics?.connectionRefused('register_timeout');
      sendError(conn, ErrorCode.UNAUTHORIZED, `no register within ${limits.registerTimeoutMs} ms`);
      close(conn, CloseCode.REGISTER_TIMEOUT, 'register timeout');
    }, limits.registerTimeoutMs);
    st.registerTimer.unref();
    ws.on('pong', () => (st.alive = true));
    ws.on('message', (data, isBinary) => onMessage(st, data, isBinary));
    ws.on('error', (err) => log.debug({ connId: conn.id, err: errorMessage(err) }, 'socket error'));
    ws.on('close', () => {
      conn.closed = true;
      states.delete(conn);
      metrics?.connectionClosed();
      if (st.registerTimer) clearTimeout(st.registerTimer);
      if (st.expTimer) clearTimeout(st.expTimer);
      const n = (perIp.get(remote) ?? 1) - 1;
      if (n <= 0) perIp.delete(remote);
      else perIp.set(remote, n);
      if (conn.userId && bucketOf.has(conn)) {
        releaseBucket(conn.userId);
        if (deps.registry.remove(conn)) void deps.discovery.claimChanged(conn.userId);
      }
    });
  }

  return {
    handleUpgrade(req, socket, head) {
      const path = (req.url ?? '').split('?')[0];
      if (path !== '/ws') {
        metrics?.connectionRefused('not_found');
        return rejectUpgrade(socket, 404, 'Not Found', 'WebSocket endpoint is /ws');
      }
      if (draining) {
        metrics?.connectionRefused('draining');
        return rejectUpgrade(socket, 503, 'Service Unavailable', 'this instance is shutting down; connect to another one');
      }
      if (!deps.isOriginAllowed(req.headers.origin) && !isSameOrigin(req)) {
        metrics?.connectionRefused('origin');
        return rejectUpgrade(socket, 403, 'Forbidden', `origin ${req.headers.origin} is not allowed (ALLOWED_ORIGINS)`);
      }
      const remote = remoteAddress(req);
      const count = perIp.get(remote) ?? 0;
      if (count >= limits.maxConnectionsPerIp) {
        metrics?.connectionRefused('ip_limit');
        return rejectUpgrade(socket, 429, 'Too Many Requests', `too many connections from ${remote} (limit ${limits.maxConnectionsPerIp})`);
      }
      perIp.set(remote, count + 1);
      socket.on('error', () => undefined);
      wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, remote));
    },
    hint(users) {
      if (users) deps.registry.deliver(users, SYNC_HINT);
      else for (const conn of deps.registry.all()) deps.registry.send(conn, SYNC_HINT);
    },
    drain(deadlineMs) {
      draining = true;
      if (inflight === 0) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const t = setTimeout(resolve, deadlineMs);
        idleWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    },
    closeAll(code, reason) {
      for (const st of states.values()) close(st.conn, code, reason);
    },
    stats: () => ({ connections: deps.registry.size(), sockets: states.size }),
    close() {
      clearInterval(pinger);
      for (const st of states.values()) st.conn.ws.terminate();
      wss.close();
    },
  };
}
