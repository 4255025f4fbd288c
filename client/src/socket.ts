/**
 * The WebSocket the client runs on, whichever implementation the caller has:
 * the browser's (the default, `globalThis.WebSocket`) or, in Node, the `ws`
 * package's, passed as the `WebSocket` option. Only what both have is
 * required; a WebSocket ping (ws) is used when the socket has one.
 */

/** A WebSocket class: the browser's, or `ws`'s (which also takes options, such as headers, as a third argument). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[], options?: never) => object;

/** The readyState of an open socket (the same in every implementation). */
const OPEN = 1;
const CLOSED = 3;

interface SocketEvents {
  open: unknown;
  message: { data: unknown };
  close: { code: number; reason: string };
  error: unknown;
}

/** The part of a WebSocket instance the client uses. */
interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener<K extends keyof SocketEvents>(type: K, listener: (event: SocketEvents[K]) => void): void;
  /** ws: a WebSocket ping, answered by a 'pong' event */
  ping?(): void;
  on?(event: 'pong', listener: () => void): unknown;
  /** ws: drop at once, without a closing handshake */
  terminate?(): void;
}

export interface SocketHandlers {
  open(): void;
  text(data: string): void;
  close(code: number, reason: string): void;
  pong(): void;
}

/** One connection attempt's socket, with what the client needs of it. */
export interface Socket {
  /** the implementation's own object (given to the onSocket option) */
  readonly raw: object;
  readonly isClosed: boolean;
  /** whether the socket can send WebSocket pings (ws can, browsers cannot) */
  readonly canPing: boolean;
  send(text: string): boolean;
  ping(): void;
  close(code: number, reason: string): void;
  /** drops at once (ws), or starts a close (browsers) */
  drop(): void;
  /** resolves once closed, or after timeoutMs */
  closed(timeoutMs: number): Promise<void>;
}

/** The constructor to use: the option's, else the platform's. */
export function resolveWebSocket(option: WebSocketConstructor | undefined): WebSocketConstructor {
  const ctor = option ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!ctor) throw new Error('no WebSocket here: pass the WebSocket option (in Node: `import WebSocket from "ws"`)');
  return ctor;
}

/** Opens a socket; `options` (ws only, for example `{ headers }`) go to the constructor as its third argument. */
export function openSocket(ctor: WebSocketConstructor, url: string, options: object | undefined, on: SocketHandlers): Socket {
  const make = ctor as unknown as new (url: string, protocols?: string | string[], options?: object) => SocketLike;
  const s = options === undefined ? new make(url) : new make(url, undefined, options);
  s.addEventListener('open', () => on.open());
  s.addEventListener('message', (ev) => {
    if (typeof ev.data === 'string') on.text(ev.data);
  });
  s.addEventListener('close', (ev) => on.close(ev.code, ev.reason));
  // An error is followed by a close: that is where the client reacts.
  s.addEventListener('error', () => undefined);
  const canPing = typeof s.ping === 'function' && typeof s.on === 'function';
  if (canPing) s.on?.('pong', () => on.pong());
  return {
    raw: s,
    get isClosed() {
      return s.readyState === CLOSED;
    },
    canPing,
    send(text) {
      if (s.readyState !== OPEN) return false;
      s.send(text);
      return true;
    },
    ping() {
      try {
        s.ping?.();
      } catch {
        // closing already
      }
    },
    close(code, reason) {
      try {
        s.close(code, reason);
      } catch {
        // closing already
      }
    },
    drop() {
      try {
        if (s.terminate) s.terminate();
        else s.close(4000, 'no answer');
      } catch {
        // closing already
      }
    },
    closed(timeoutMs) {
      if (s.readyState === CLOSED) return Promise.resolve();
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          if (s.terminate) s.terminate();
          resolve();
        }, timeoutMs);
        s.addEventListener('close', () => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}
