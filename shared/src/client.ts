/**
 * A SimpleChat protocol client for Node (tests, load tools, integrations).
 * ProtocolSocket is one connection: it sends frames and lets you await answers
 * by id or by predicate; every wait is bounded.
 */
import WebSocket from 'ws';
import type { ServerFrame, WireMessage } from './wire';

export type AnyServerFrame = ServerFrame & Record<string, unknown>;

export interface ProtocolSocketOptions {
  headers?: Record<string, string>;
  /** default bound of every wait */
  timeoutMs?: number;
  /** answer the server's pings (default true; false plays a client that stopped answering) */
  autoPong?: boolean;
}

export class FrameTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`no ${what} within ${ms} ms`);
    this.name = 'FrameTimeoutError';
  }
}

export class ConnectionClosedError extends Error {
  constructor(readonly code: number) {
    super(`connection closed (${code})`);
    this.name = 'ConnectionClosedError';
  }
}

export class ProtocolSocket {
  readonly ws: WebSocket;
  readonly frames: AnyServerFrame[] = [];
  closeCode: number | undefined;
  closeReason = '';
  private readonly timeoutMs: number;
  private waiters: { match(f: AnyServerFrame): boolean; resolve(f: AnyServerFrame): void; reject(err: Error): void }[] = [];
  private closeWaiters: ((code: number) => void)[] = [];
  private seq = 0;
  readonly opened: Promise<void>;

  constructor(url: string, options: ProtocolSocketOptions = {}) {
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.ws = new WebSocket(url, { headers: options.headers, autoPong: options.autoPong ?? true });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
      this.ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`upgrade refused: HTTP ${res.statusCode}`), { statusCode: res.statusCode })));
    });
    this.opened.catch(() => undefined);
    this.ws.on('error', () => undefined);
    this.ws.on('message', (data) => {
      let frame: AnyServerFrame;
      try {
        frame = JSON.parse(data.toString()) as AnyServerFrame;
      } catch {
        return;
      }
      this.frames.push(frame);
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) (w.match(frame) ? w.resolve(frame) : this.waiters.push(w));
    });
    this.ws.on('close', (code, reason) => {
      this.closeCode = code;
      this.closeReason = reason.toString();
      // nothing more can arrive: pending waits fail now instead of at their timeout
      const pending = this.waiters;
      this.waiters = [];
      for (const w of pending) w.reject(new ConnectionClosedError(code));
      for (const w of this.closeWaiters) w(code);
      this.closeWaiters = [];
    });
  }

  static async open(url: string, options?: ProtocolSocketOptions): Promise<ProtocolSocket> {
    const s = new ProtocolSocket(url, options);
    await s.opened;
    return s;
  }

  nextId(): string {
    return `r${++this.seq}-${Math.random().toString(36).slice(2, 8)}`;
  }

  sendRaw(data: string | Buffer, binary = false): void {
    this.ws.send(data, { binary });
  }

  send(frame: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(frame));
  }

  /** Resolves with the first frame (already received or future) matching `match`. */
  waitFor(match: (f: AnyServerFrame) => boolean, what = 'matching frame', timeoutMs = this.timeoutMs, fromIndex = 0): Promise<AnyServerFrame> {
    const seen = this.frames.slice(fromIndex).find(match);
    if (seen) return Promise.resolve(seen);
    if (this.closeCode !== undefined) return Promise.reject(new ConnectionClosedError(this.closeCode));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new FrameTimeoutError(what, timeoutMs));
      }, timeoutMs);
      const waiter = {
        match,
        resolve: (f: AnyServerFrame) => {
          clearTimeout(timer);
          resolve(f);
        },
        reject: (err: Error) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.waiters.push(waiter);
    });
  }

  /** Sends a frame with an id and resolves with the answer carrying that id (an error frame included). */
  async request(frame: Record<string, unknown>, timeoutMs = this.timeoutMs): Promise<AnyServerFrame> {
    const id = (frame.id as string | undefined) ?? this.nextId();
    const from = this.frames.length;
    this.send({ ...frame, id });
    return this.waitFor((f) => f.id === id && f.type !== 'message', `answer to ${String(frame.type)} ${id}`, timeoutMs, from);
  }

  async register(token: string): Promise<AnyServerFrame> {
    const from = this.frames.length;
    this.send({ type: 'register', token });
    return this.waitFor((f) => f.type === 'registered' || f.type === 'error', 'registered', this.timeoutMs, from);
  }

  messages(): WireMessage[] {
    return this.frames.filter((f) => f.type === 'message') as unknown as WireMessage[];
  }

  waitForMessage(match: (m: WireMessage) => boolean, timeoutMs = this.timeoutMs): Promise<WireMessage> {
    return this.waitFor((f) => f.type === 'message' && match(f as unknown as WireMessage), 'message', timeoutMs) as unknown as Promise<WireMessage>;
  }

  waitForClose(timeoutMs = this.timeoutMs): Promise<number> {
    if (this.closeCode !== undefined) return Promise.resolve(this.closeCode);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new FrameTimeoutError('close', timeoutMs)), timeoutMs);
      this.closeWaiters.push((code) => {
        clearTimeout(timer);
        resolve(code);
      });
    });
  }

  close(): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close();
  }
}
