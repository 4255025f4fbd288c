/**
 * One client connection: its phase, identity, timers, rate bucket, the frames
 * that arrive while it registers, and the one path that writes to its socket.
 * Every frame for the client (answers, errors, `registered`, deliveries)
 * goes through write(), so the slow-client check covers them all.
 */
import type { WebSocket, RawData } from 'ws';
import { CloseCode, type ErrorCode, type ServerFrame, type Logger } from '@simplechat/shared';
import type { GatewayMetrics } from './metrics';
import { createWindowCounter, type TokenBucket } from './rate-limit';

/** What every session of one gateway shares. */
export interface SessionEnv {
  /** a client whose socket buffers more than this is cut off with 1013 */
  maxBufferedBytes: number;
  log: Logger;
  metrics?: GatewayMetrics | undefined;
}

export type Phase = 'new' | 'registering' | 'registered';

/**
 * How long a slow client, once cut off, has to read what is buffered for it and then the 1013
 * close frame behind that, before its socket is dropped. ws's own close handshake waits as long.
 * What it holds meanwhile is bounded by the buffer limit: nothing is added after the cut.
 */
const SLOW_CLIENT_CLOSE_GRACE_MS = 30_000;
/** a closed socket whose close handshake does not finish is dropped after this long */
const CLOSE_GRACE_MS = 2000;
const BAD_FRAME_WINDOW_MS = 60_000;

export class Session {
  phase: Phase = 'new';
  userId: string | undefined = undefined;
  /** answered a ping since the last one */
  isAlive = true;
  closed = false;
  /** token expiry, seconds since the epoch */
  exp = 0;
  expTimer: NodeJS.Timeout | undefined = undefined;
  registerTimer: NodeJS.Timeout | undefined = undefined;
  /** the user's send bucket on this instance, from registration on */
  bucket: TokenBucket | undefined = undefined;
  readonly badFrames = createWindowCounter(BAD_FRAME_WINDOW_MS);
  /** frames received while registering, answered once registered */
  queued: { data: RawData; isBinary: boolean }[] = [];
  /** deliveries while registering wait here until `registered` is sent */
  private pending: string[] | null = null;

  constructor(
    readonly id: string,
    readonly ws: WebSocket,
    readonly remote: string,
    private readonly env: SessionEnv,
  ) {}

  /** The one write to the socket. */
  write(text: string): void {
    if (this.closed) return;
    if (this.ws.bufferedAmount > this.env.maxBufferedBytes) {
      // A client that does not read would make us buffer without bound: cut it off; it catches up with sync.
      // Nothing more is queued for it; the close frame follows what is buffered already.
      this.closed = true;
      this.env.metrics?.serverClosed(CloseCode.TRY_AGAIN_LATER);
      this.env.log.debug({ connId: this.id, userId: this.userId }, 'closed a slow client (1013)');
      this.ws.close(CloseCode.TRY_AGAIN_LATER, 'send buffer full: reconnect and sync');
      setTimeout(() => this.ws.terminate(), SLOW_CLIENT_CLOSE_GRACE_MS).unref();
      return;
    }
    this.ws.send(text);
    this.env.metrics?.frameSent(text);
  }

  /** A serialised frame routed to this user: held back while `registered` is still on its way. */
  deliver(text: string): void {
    if (this.pending) this.pending.push(text);
    else this.write(text);
  }

  send(frame: ServerFrame): void {
    this.write(JSON.stringify(frame));
  }

  sendError(code: ErrorCode, message: string, id?: string, extra?: { retryAfterMs: number }): void {
    if (this.closed) return;
    this.send({ type: 'error', code, message, ...(id === undefined ? {} : { id }), ...extra });
    this.env.metrics?.errorSent(code);
  }

  /** From now on deliveries wait for `registered`. */
  holdDeliveries(): void {
    this.pending ??= [];
  }

  /** Sends what waited for `registered` (which must just have been written). */
  releaseDeliveries(): void {
    const held = this.pending;
    this.pending = null;
    if (held) for (const text of held) this.write(text);
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.env.metrics?.serverClosed(code);
    this.ws.close(code, reason);
    setTimeout(() => this.ws.terminate(), CLOSE_GRACE_MS).unref();
  }

  /** The socket closed: timers go. */
  dispose(): void {
    this.closed = true;
    if (this.registerTimer) clearTimeout(this.registerTimer);
    if (this.expTimer) clearTimeout(this.expTimer);
  }
}
