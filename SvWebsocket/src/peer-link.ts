/**
 * The peer link: how SvWebsocket instances hand each other frames for users
 * connected elsewhere. A sending instance keeps one long-lived WebSocket to
 * each peer it forwards to, at /internal/link, authenticated once in the
 * upgrade with the internal token. After that the hot path has no HTTP
 * parsing, routing, body parsing or per-request headers: everything for one
 * peer within one tick is one text message
 *
 *     {"seq":N,"items":[{"users":[...],"frame":"..."}, ...]}
 *
 * (the items of POST /internal/deliver), and the receiver answers with a
 * cumulative `{"ack":N}` once the frames are handed to its connections, one
 * ack per tick however many batches arrived in it.
 *
 * Sending side (createPeerLink, one per peer): at most `window` batches wait
 * for their ack; while the window is full, frames queue and coalesce into the
 * next batch. A batch not acked within timeoutMs, an error or a close of the
 * socket, or a refused upgrade gives up every unacked and queued frame (the
 * owner reports them: recipients catch up by sync) and terminates the socket.
 * The next frame reconnects; a peer whose upgrade keeps failing is retried
 * after a growing pause, and frames for it fail at once meanwhile, so a dead
 * peer does not cost a connection attempt per tick.
 *
 * Receiving side (createPeerLinkServer): /internal/* upgrades land here; the
 * token is checked like internalAuth checks HTTP requests (current or
 * previous token, path case and trailing slash ignored). A message that does
 * not parse closes the link with 1008. Links stay open while the instance
 * drains, so frames peers already sent still land, until the server closes.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import {
  CloseCode,
  PEER_LINK_PATH,
  peerLinkAck,
  peerLinkBatch,
  isAuthorized,
  createLogThrottle,
  errorMessage,
  type Logger,
} from '@simplechat/shared';
import type { ConnectionRegistry } from './connections';
import type { PeerLinkMetrics } from './metrics';

export interface PeerLinkItem {
  users: string[];
  frame: string;
}

// ---- sending side -----------------------------------------------------------

export interface PeerLink {
  /** queues a frame for the peer; it goes out with the next flush() */
  push(item: PeerLinkItem): void;
  /** sends what is queued while the window has room (connecting first if needed) */
  flush(): void;
  /** no socket, nothing queued or unacked, no pause pending: nothing is lost by forgetting it */
  isIdle(): boolean;
  /** sends what is queued, waits for the acks (each bounded by timeoutMs), closes the socket */
  close(): Promise<void>;
}

export interface PeerLinkDeps {
  /** the peer's base URL as SvDiscover knows it (http or https) */
  url: string;
  token: string;
  /** a batch not acked within this long fails the link; also bounds the upgrade */
  timeoutMs: number;
  /** unacked batches at once */
  window: number;
  /** queued frames beyond this are given up, oldest first */
  maxQueuedFrames: number;
  maxFramesPerBatch: number;
  /** rough bound of a batch's size in characters (see batchSizeOf) */
  maxBatchChars: number;
  /** a batch settled: acked (ok) or given up */
  onBatch(frames: number, seconds: number, ok: boolean): void;
  /** frames that did not reach the peer, in batches given up, queued behind them, or dropped from a full queue */
  onFailed(items: PeerLinkItem[], err: Error): void;
  log: Logger;
}

interface Batch {
  seq: number;
  items: PeerLinkItem[];
  startedAt: number;
  /** the serialised message, kept only until it is written (batches cut while the link connects) */
  text?: string;
}

const RETRY_BASE_MS = 100;
const RETRY_MAX_MS = 2000;
/** acks are a few bytes; anything larger from a peer is a protocol error */
const MAX_ACK_BYTES = 1024;
const CLOSE_GRACE_MS = 1000;
/** user ids are at most 64 characters; quotes and a comma make 67 */
const CHARS_PER_USER = 68;
const CHARS_PER_ITEM = 24;

/** ws(s)://host:port/internal/link for a peer's http(s) base URL (its path is ignored, as undici's origin was). */
export function peerLinkUrl(url: string): string {
  const u = new URL(PEER_LINK_PATH, url);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

function sizeOf(item: PeerLinkItem): number {
  return item.frame.length + item.users.length * CHARS_PER_USER + CHARS_PER_ITEM;
}

function rawText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

/** Sends a close frame and waits for the peer's; terminates after CLOSE_GRACE_MS. */
function closeGracefully(ws: WebSocket, code: number, reason: string): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      ws.terminate();
      resolve();
    }, CLOSE_GRACE_MS);
    ws.once('close', () => {
      clearTimeout(t);
      resolve();
    });
    ws.close(code, reason);
  });
}

export function createPeerLink(deps: PeerLinkDeps): PeerLink {
  const target = peerLinkUrl(deps.url);
  const headers = { authorization: `Bearer ${deps.token}` };
  let ws: WebSocket | undefined;
  let isOpen = false;
  let seq = 0;
  let queue: PeerLinkItem[] = [];
  const unacked: Batch[] = [];
  let timer: NodeJS.Timeout | undefined;
  let failedConnects = 0;
  let lastConnectError = '';
  let retryAt = 0;
  let closing: Promise<void> | undefined;
  let onProgress: (() => void) | undefined;

  function progressed(): void {
    const wake = onProgress;
    onProgress = undefined;
    wake?.();
  }

  function connectFailed(err: unknown): void {
    // Never got through the upgrade: pause before the next attempt, longer each time.
    failedConnects += 1;
    lastConnectError = errorMessage(err);
    retryAt = performance.now() + Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** (failedConnects - 1));
  }

  function connect(): WebSocket | undefined {
    if (ws) return ws;
    if (performance.now() < retryAt) return undefined;
    let sock: WebSocket;
    try {
      sock = new WebSocket(target, { headers, perMessageDeflate: false, handshakeTimeout: deps.timeoutMs, maxPayload: MAX_ACK_BYTES, followRedirects: false });
    } catch (err) {
      connectFailed(err);
      return undefined;
    }
    ws = sock;
    isOpen = false;
    sock.on('open', () => {
      if (ws !== sock) return;
      isOpen = true;
      failedConnects = 0;
      deps.log.debug({ url: target }, 'peer link open');
      for (const b of unacked) {
        if (b.text === undefined) continue;
        sock.send(b.text);
        b.text = undefined;
      }
    });
    sock.on('message', (data, isBinary) => onAck(sock, data, isBinary));
    sock.on('error', (err) => fail(sock, err));
    sock.on('close', (code, reason) => fail(sock, new Error(`peer closed the link (${code}${reason.length > 0 ? `: ${reason.toString()}` : ''})`)));
    return sock;
  }

  /** The socket is done for: everything unacked or queued is given up. */
  function fail(sock: WebSocket, err: Error): void {
    if (ws !== sock) return;
    ws = undefined;
    if (!isOpen) connectFailed(err);
    isOpen = false;
    sock.terminate();
    giveUp(err);
  }

  function giveUp(err: Error): void {
    if (timer) clearTimeout(timer);
    timer = undefined;
    const now = performance.now();
    let lost: PeerLinkItem[] = [];
    for (const b of unacked.splice(0)) {
      deps.onBatch(b.items.length, (now - b.startedAt) / 1000, false);
      lost = lost.concat(b.items);
    }
    // Queued frames count as the batches they would have become.
    for (let i = 0; i < queue.length; i += deps.maxFramesPerBatch) deps.onBatch(Math.min(deps.maxFramesPerBatch, queue.length - i), 0, false);
    lost = lost.concat(queue);
    queue = [];
    if (lost.length > 0) deps.onFailed(lost, err);
    progressed();
  }

  function onAck(sock: WebSocket, data: RawData, isBinary: boolean): void {
    if (ws !== sock) return;
    let ack: number | undefined;
    if (!isBinary) {
      try {
        const parsed = peerLinkAck.safeParse(JSON.parse(rawText(data)));
        if (parsed.success && parsed.data.ack <= seq) ack = parsed.data.ack;
      } catch {
        // not JSON: handled below
      }
    }
    if (ack === undefined) return fail(sock, new Error('peer answered with an invalid ack'));
    const now = performance.now();
    for (;;) {
      const b = unacked[0];
      if (!b || b.seq > ack) break;
      unacked.shift();
      deps.onBatch(b.items.length, (now - b.startedAt) / 1000, true);
    }
    flush();
    progressed();
  }

  function armTimer(): void {
    const oldest = unacked[0];
    if (timer || !oldest) return;
    timer = setTimeout(onTimer, Math.max(0, oldest.startedAt + deps.timeoutMs - performance.now()));
    timer.unref();
  }

  function onTimer(): void {
    timer = undefined;
    const oldest = unacked[0];
    if (!oldest) return;
    if (performance.now() - oldest.startedAt < deps.timeoutMs) return armTimer();
    if (ws) fail(ws, new Error(`no ack within ${deps.timeoutMs} ms`));
  }

  /** The next batch: up to maxFramesPerBatch frames and about maxBatchChars (at least one frame). */
  function takeBatch(): PeerLinkItem[] {
    const limit = Math.min(queue.length, deps.maxFramesPerBatch);
    let n = 0;
    let chars = 0;
    while (n < limit) {
      const item = queue[n];
      if (!item) break;
      chars += sizeOf(item);
      if (n > 0 && chars > deps.maxBatchChars) break;
      n += 1;
    }
    return n === queue.length ? queue.splice(0) : queue.splice(0, n);
  }

  function flush(): void {
    while (queue.length > 0 && unacked.length < deps.window) {
      const sock = connect();
      if (!sock) {
        giveUp(new Error(`peer link paused for ${Math.ceil(retryAt - performance.now())} ms after ${failedConnects} failed connects (last: ${lastConnectError})`));
        return;
      }
      const items = takeBatch();
      seq += 1;
      const text = JSON.stringify({ seq, items });
      // Before the upgrade completes, the open handler sends it.
      if (isOpen) sock.send(text);
      unacked.push({ seq, items, startedAt: performance.now(), text: isOpen ? undefined : text });
      armTimer();
    }
    if (queue.length > deps.maxQueuedFrames) {
      // The peer does not keep up at all: give up the oldest frames rather than grow without bound.
      deps.onFailed(queue.splice(0, queue.length - deps.maxQueuedFrames), new Error('peer queue full'));
    }
  }

  return {
    push(item) {
      queue.push(item);
    },
    flush,
    isIdle: () => !ws && queue.length === 0 && unacked.length === 0 && performance.now() >= retryAt,
    close() {
      closing ??= (async () => {
        flush();
        while (queue.length > 0 || unacked.length > 0) {
          await new Promise<void>((resolve) => (onProgress = resolve));
          flush();
        }
        if (timer) clearTimeout(timer);
        timer = undefined;
        const sock = ws;
        ws = undefined;
        isOpen = false;
        if (sock) await closeGracefully(sock, 1000, 'instance shutting down');
      })();
      return closing;
    },
  };
}

// ---- receiving side ---------------------------------------------------------

export interface PeerLinkServer {
  /** answers an upgrade to an /internal/* path: 401 without a valid token, 404 elsewhere than the link */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** closes every link (1001) and refuses new ones */
  close(): Promise<void>;
}

export interface PeerLinkServerDeps {
  /** the current internal token and, during a rotation, the previous one */
  tokens: readonly string[];
  registry: Pick<ConnectionRegistry, 'deliver'>;
  log: Logger;
  metrics?: PeerLinkMetrics;
  /** a refused upgrade (counted with the other refused internal requests) */
  onRefused?(): void;
  /** largest message accepted; senders keep batches well below it */
  maxPayloadBytes?: number;
  /** a link that does not answer a ping within this long is terminated */
  pingIntervalMs?: number;
}

/** 64 MiB: a batch of 5,000 frames near the client frame limit, with room for JSON escaping */
export const PEER_LINK_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024;
const PING_INTERVAL_MS = 30_000;
const REFUSED_LOG_INTERVAL_MS = 60_000;
const BAD_MESSAGE_LOG_INTERVAL_MS = 10_000;
/** a close reason is at most 123 bytes */
const MAX_REASON_CHARS = 100;

export function isPeerLinkPath(path: string): boolean {
  return path.toLowerCase().replace(/\/+$/, '') === PEER_LINK_PATH;
}

function rejectUpgrade(socket: Duplex, status: number, text: string, message: string): void {
  const body = JSON.stringify({ error: message });
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

export function createPeerLinkServer(deps: PeerLinkServerDeps): PeerLinkServer {
  const log = deps.log.child({ component: 'peer-link' });
  const wss = new WebSocketServer({ noServer: true, maxPayload: deps.maxPayloadBytes ?? PEER_LINK_MAX_PAYLOAD_BYTES, perMessageDeflate: false, clientTracking: false });
  const links = new Map<WebSocket, { isAlive: boolean }>();
  const refusals = createLogThrottle(REFUSED_LOG_INTERVAL_MS);
  const badMessages = createLogThrottle(BAD_MESSAGE_LOG_INTERVAL_MS);
  let isClosed = false;
  let closing: Promise<void> | undefined;

  // A sender that vanished without closing its socket would otherwise hold it forever.
  const pinger = setInterval(() => {
    for (const [ws, st] of links) {
      if (!st.isAlive) {
        ws.terminate();
        continue;
      }
      st.isAlive = false;
      ws.ping();
    }
  }, deps.pingIntervalMs ?? PING_INTERVAL_MS);
  pinger.unref();

  function refuse(ws: WebSocket, remote: string | undefined, reason: string): void {
    const detail = { remote, reason };
    if (badMessages.shouldLog()) log.warn({ ...detail, refusedSoFar: badMessages.count }, 'closed a peer link after a malformed message (1008)');
    else log.debug(detail, 'closed a peer link after a malformed message (1008)');
    ws.close(CloseCode.POLICY_VIOLATION, reason.length > MAX_REASON_CHARS ? `${reason.slice(0, MAX_REASON_CHARS - 3)}...` : reason);
  }

  function onLink(ws: WebSocket, remote: string | undefined): void {
    const st = { isAlive: true };
    links.set(ws, st);
    let lastSeq = 0;
    let isAckScheduled = false;
    const sendAck = () => {
      isAckScheduled = false;
      if (ws.readyState === WebSocket.OPEN) ws.send(`{"ack":${lastSeq}}`);
    };
    log.debug({ remote }, 'peer link accepted');
    ws.on('pong', () => (st.isAlive = true));
    ws.on('message', (data, isBinary) => {
      // After a refusal, whatever was already on the wire is ignored.
      if (ws.readyState !== WebSocket.OPEN) return;
      if (isBinary) return refuse(ws, remote, 'peer link messages are JSON text');
      let json: unknown;
      try {
        json = JSON.parse(rawText(data));
      } catch {
        return refuse(ws, remote, 'peer link message is not JSON');
      }
      const parsed = peerLinkBatch.safeParse(json);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        return refuse(ws, remote, `invalid batch: ${issue ? `${issue.path.join('.') || 'message'}: ${issue.message}` : 'invalid'}`);
      }
      const batch = parsed.data;
      if (batch.seq <= lastSeq) return refuse(ws, remote, `seq ${batch.seq} after ${lastSeq}: seq must increase`);
      lastSeq = batch.seq;
      for (const item of batch.items) deps.registry.deliver(item.users, item.frame);
      deps.metrics?.peerBatchReceived(batch.items.length);
      if (!isAckScheduled) {
        isAckScheduled = true;
        setImmediate(sendAck);
      }
    });
    ws.on('error', (err) => log.debug({ remote, err: errorMessage(err) }, 'peer link error'));
    ws.on('close', (code) => {
      links.delete(ws);
      log.debug({ remote, code }, 'peer link closed');
    });
  }

  return {
    handleUpgrade(req, socket, head) {
      socket.on('error', () => undefined);
      const path = (req.url ?? '').split('?')[0] ?? '';
      const remote = req.socket.remoteAddress;
      if (!isAuthorized(req.headers.authorization, deps.tokens)) {
        deps.onRefused?.();
        if (refusals.shouldLog()) log.warn({ path, remote, refusedSoFar: refusals.count }, 'refused internal upgrade without a valid token');
        else log.debug({ path, remote }, 'refused internal upgrade without a valid token');
        return rejectUpgrade(socket, 401, 'Unauthorized', 'unauthorized: internal endpoints need Authorization: Bearer <INTERNAL_TOKEN>');
      }
      if (!isPeerLinkPath(path)) return rejectUpgrade(socket, 404, 'Not Found', `the internal WebSocket endpoint is ${PEER_LINK_PATH}`);
      if (isClosed) return rejectUpgrade(socket, 503, 'Service Unavailable', 'this instance is shutting down');
      wss.handleUpgrade(req, socket, head, (ws) => onLink(ws, remote));
    },
    close() {
      closing ??= (async () => {
        isClosed = true;
        clearInterval(pinger);
        await Promise.all([...links.keys()].map((ws) => closeGracefully(ws, CloseCode.GOING_AWAY, 'instance shutting down')));
        wss.close();
      })();
      return closing;
    },
  };
}
