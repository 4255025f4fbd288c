/**
 * Client connections: upgrade checks, one Session per connection, parsing and
 * dispatch of each frame to its handler (handlers/), limits (bad frames,
 * connections per address), token expiry, pings, and draining on shutdown.
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
  DomainError,
  isErrorCode,
  errorMessage,
  randomToken,
  createLogThrottle,
  type ClientFrame,
  type ServerFrame,
  type Logger,
} from '@simplechat/shared';
import type { Auth } from './auth';
import type { ConnectionRegistry } from './connections';
import type { Discovery } from './discovery';
import type { Idempotency } from './idempotency';
import type { PersistClient } from './persist-client';
import type { Publisher } from './publisher';
import type { Router } from './router';
import type { Rooms } from './rooms';
import type { Presence } from './presence';
import type { TypingGate } from './typing';
import type { Receipts } from './receipts';
import type { GatewayMetrics } from './metrics';
import { createTokenBucket, type TokenBucket } from './rate-limit';
import type { RoomRateLimiter } from './room-rate';
import { Session } from './session';
import { handlers, type GatewayContext } from './handlers';

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
  /** a client whose socket buffers more than this is cut off with 1013 */
  maxBufferedBytes: number;
  /** messages per second into one room, on this instance */
  roomRateLimitPerSec: number;
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
  rooms: Rooms;
  presence: Presence;
  typing: TypingGate;
  receipts: Receipts;
  roomRate: RoomRateLimiter;
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

const SYNC_HINT = JSON.stringify({ type: 'sync.hint' } satisfies ServerFrame);
const MAX_QUEUED_WHILE_REGISTERING = 100;
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

export function createGateway(deps: GatewayDeps): Gateway {
  const { limits, metrics } = deps;
  const log = deps.log.child({ component: 'gateway' });
  const wss = new WebSocketServer({ noServer: true, maxPayload: limits.maxFrameBytes, perMessageDeflate: false, clientTracking: false });
  const sessionEnv = { maxBufferedBytes: limits.maxBufferedBytes, log, metrics };
  const sessions = new Set<Session>();
  const perIp = new Map<string, number>();
  const buckets = new Map<string, { bucket: TokenBucket; refs: number }>();
  let draining = false;
  let inflight = 0;
  /** claims of users whose first connection here is registering, until SvDiscover has them */
  const claiming = new Map<string, Promise<boolean>>();
  /** the storage cursor read in flight, shared by every registration that starts meanwhile */
  let cursorRead: Promise<string | undefined> | undefined;
  let idleWaiters: (() => void)[] = [];
  const storageFailures = createLogThrottle(STORAGE_FAILURE_LOG_INTERVAL_MS);

  const pinger = setInterval(() => {
    for (const s of sessions) {
      if (!s.isAlive) {
        s.ws.terminate();
        continue;
      }
      s.isAlive = false;
      s.ws.ping();
    }
  }, limits.pingIntervalMs);
  pinger.unref();

  function remoteAddress(req: IncomingMessage): string {
    if (limits.trustProxy) {
      const fwd = req.headers['x-forwarded-for'];
      const first = (Array.isArray(fwd) ? fwd[0] : fwd)?.split(',')[0]?.trim();
      if (first) return first;
    }
    return req.socket.remoteAddress ?? 'unknown';
  }

  function releaseBucket(userId: string): void {
    const b = buckets.get(userId);
    if (b && --b.refs <= 0) buckets.delete(userId);
  }

  function armExpiry(s: Session): void {
    if (s.expTimer) clearTimeout(s.expTimer);
    const delay = s.exp * 1000 - Date.now();
    s.expTimer = setTimeout(
      () => {
        if (s.exp * 1000 > Date.now()) return armExpiry(s); // long tokens: re-arm past the timer limit
        s.sendError(ErrorCode.UNAUTHORIZED, 'token expired; get a new token and reconnect');
        s.close(CloseCode.UNAUTHORIZED, 'token expired');
      },
      Math.max(0, Math.min(delay, 2 ** 31 - 1)),
    );
    s.expTimer.unref();
  }

  const ctx: GatewayContext = {
    ...deps,
    limits,
    log,
    metrics,
    sends: { inProgress: 0 },
    armExpiry,
    bucketFor(userId) {
      let b = buckets.get(userId);
      if (!b) buckets.set(userId, (b = { bucket: createTokenBucket(limits.rateLimitPerSec, limits.rateLimitBurst), refs: 0 }));
      b.refs++;
      return b.bucket;
    },
    claim(userId, isFirstHere) {
      // A further connection of the user waits for a claim still on its way, like the first one.
      if (!isFirstHere) return claiming.get(userId) ?? Promise.resolve(true);
      const mine = deps.discovery.claimChanged(userId);
      claiming.set(userId, mine);
      void mine.finally(() => {
        if (claiming.get(userId) === mine) claiming.delete(userId);
      });
      return mine;
    },
    /**
     * The storage position for `registered`, read alongside the claim rather than after it, and
     * shared by the registrations that start while a read is in flight: a reconnect storm costs
     * a few reads, not one per connection. A position from a little earlier than this
     * registration only means a later sync returns messages the client may have seen (shown
     * once by msgId); it never skips one. undefined: storage unreachable, no cursor.
     */
    readCursor() {
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
    },
    /**
     * A read from SvPersist. When it fails, the client is told what to do, not where SvPersist
     * runs (that goes to the log, at most once a minute while it keeps failing).
     */
    async fromStorage(what, read) {
      try {
        const res = await read();
        const failedReads = storageFailures.end();
        if (failedReads > 0) log.info({ failedReads }, 'SvPersist answers history and sync reads again');
        return res;
      } catch (err) {
        if (!(err instanceof UnavailableError)) throw err;
        if (storageFailures.shouldLog()) log.warn({ err: err.message, failedReads: storageFailures.count }, 'history and sync reads from SvPersist fail (see err); clients are told to retry later');
        throw new UnavailableError(`message storage unavailable (${what}); retry later`, { cause: err });
      }
    },
    replayQueued(s) {
      const queued = s.queued;
      s.queued = [];
      for (const q of queued) onMessage(s, q.data, q.isBinary);
    },
  };

  function badFrame(s: Session, message: string, id?: string): void {
    const isRegistered = s.phase === 'registered';
    s.sendError(isRegistered ? ErrorCode.BAD_REQUEST : ErrorCode.UNAUTHORIZED, isRegistered ? message : `${message}; register first with {"type":"register","token":"<JWT>"}`, id);
    if (s.badFrames.hit() > limits.maxBadFrames) s.close(CloseCode.POLICY_VIOLATION, 'too many bad frames');
  }

  function track(s: Session, work: Promise<void> | void, id: string | undefined): void {
    if (!work) return;
    inflight++;
    work
      .catch((err: unknown) => {
        if (err instanceof UnavailableError) s.sendError(ErrorCode.UNAVAILABLE, err.message, id);
        else if (err instanceof DomainError && isErrorCode(err.code)) s.sendError(err.code, err.message, id, err.retryAfterMs === undefined ? undefined : { retryAfterMs: err.retryAfterMs });
        else {
          log.error({ err, connId: s.id }, 'frame handling failed');
          s.sendError(ErrorCode.INTERNAL, 'internal error; retry later', id);
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

  function dispatch(s: Session, frame: ClientFrame): void {
    const handler = handlers[frame.type] as (ctx: GatewayContext, s: Session, f: ClientFrame) => Promise<void> | void;
    track(s, handler(ctx, s, frame), frame.id);
  }

  function onMessage(s: Session, data: RawData, isBinary: boolean): void {
    if (s.closed) return;
    if (s.phase === 'registering') {
      // Frames pipelined right after register are answered once registered.
      if (s.queued.length < MAX_QUEUED_WHILE_REGISTERING) s.queued.push({ data, isBinary });
      else badFrame(s, 'too many frames before registered', isBinary ? undefined : frameIdOf(data.toString()));
      return;
    }
    if (isBinary) {
      metrics?.frameReceived('binary');
      return badFrame(s, 'binary frames are not supported; send JSON text frames');
    }
    const parsed = parseClientFrame(data.toString(), { maxBodyChars: limits.maxBodyChars });
    metrics?.frameReceived(parsed.ok ? parsed.frame.type : 'invalid');
    if (!parsed.ok) {
      if (s.phase === 'new' && parsed.message.startsWith('register:') && parsed.fields?.includes('token')) {
        // A register frame without a usable token: same as a bad token. Any other bad field
        // gets `unauthorized` and leaves the connection open for a correct register.
        s.sendError(ErrorCode.UNAUTHORIZED, parsed.message, parsed.id);
        return s.close(CloseCode.UNAUTHORIZED, 'unauthorized');
      }
      if (s.phase === 'registered' && parsed.message.startsWith('refresh:') && parsed.fields?.includes('token')) {
        // A refresh without a usable token is a bad token (PROTOCOL.md): refused, identity kept.
        return s.sendError(ErrorCode.UNAUTHORIZED, `refresh refused: ${parsed.message.slice('refresh: '.length)}; the connection keeps its current token`, parsed.id);
      }
      if (parsed.code === ErrorCode.TOO_LARGE && s.phase === 'registered') return s.sendError(parsed.code, parsed.message, parsed.id);
      return badFrame(s, parsed.message, parsed.id);
    }
    const frame = parsed.frame;
    if (s.phase === 'new' && frame.type !== 'register') return badFrame(s, `'${frame.type}' before register`, frame.id);
    if (draining && frame.type !== 'register') return s.sendError(ErrorCode.UNAVAILABLE, 'this instance is shutting down; reconnect and retry with the same id', frame.id);
    dispatch(s, frame);
  }

  function onConnection(ws: WebSocket, remote: string): void {
    const s = new Session(randomToken(6), ws, remote, sessionEnv);
    metrics?.connectionOpened();
    sessions.add(s);
    s.registerTimer = setTimeout(() => {
      if (s.phase !== 'new' || s.closed) return;
      metrics?.connectionRefused('register_timeout');
      s.sendError(ErrorCode.UNAUTHORIZED, `no register within ${limits.registerTimeoutMs} ms`);
      s.close(CloseCode.REGISTER_TIMEOUT, 'register timeout');
    }, limits.registerTimeoutMs);
    s.registerTimer.unref();
    ws.on('pong', () => (s.isAlive = true));
    ws.on('message', (data, isBinary) => onMessage(s, data, isBinary));
    ws.on('error', (err) => log.debug({ connId: s.id, err: errorMessage(err) }, 'socket error'));
    ws.on('close', () => {
      s.dispose();
      sessions.delete(s);
      deps.presence.drop(s);
      metrics?.connectionClosed();
      const n = (perIp.get(remote) ?? 1) - 1;
      if (n <= 0) perIp.delete(remote);
      else perIp.set(remote, n);
      if (s.userId && s.bucket) {
        releaseBucket(s.userId);
        if (deps.registry.remove(s)) void deps.discovery.claimChanged(s.userId);
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
      else for (const s of deps.registry.all()) s.deliver(SYNC_HINT);
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
      for (const s of sessions) s.close(code, reason);
    },
    stats: () => ({ connections: deps.registry.size(), sockets: sessions.size }),
    close() {
      clearInterval(pinger);
      deps.roomRate.close();
      for (const s of sessions) s.ws.terminate();
      wss.close();
    },
  };
}
