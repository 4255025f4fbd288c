/**
 * The outbox: every send keeps its `id` until acked (PROTOCOL.md "Sending").
 * An unacked send is sent again with the same id after each register, after
 * `unavailable` or `internal` (with backoff), after `rate_limited` (after
 * retryAfterMs), and when no answer came within ackTimeoutMs; the server
 * answers a resend with the first msgId. It is refused for good only by an
 * answer that resending cannot change (bad_request, too_large, forbidden,
 * not_found), or here when its frame is larger than the server takes.
 */
import { backoffMs } from './backoff.js';
import { SendRejectedError } from './errors.js';
import type { OutboxEntry } from './persistence.js';
import { ErrorCode, type SendFrame, type ServerFrame } from './wire.js';

export interface Ack {
  id: string;
  msgId: string;
  ts: number;
  /** the message's position in its conversation */
  seq: number;
}

/** resend delay after `unavailable` / `internal`, doubling per attempt up to the cap */
const RETRY_BASE_MS = 250;
const RETRY_MAX_MS = 5_000;

interface PendingSend {
  entry: OutboxEntry;
  attempts: number;
  resolve(ack: Ack): void;
  reject(err: Error): void;
  promise: Promise<Ack>;
  /** resend or ack-timeout timer */
  timer?: ReturnType<typeof setTimeout>;
}

export interface OutboxDeps {
  /** writes the frame on a registered connection; false when there is none */
  write(frame: SendFrame): boolean;
  ackTimeoutMs: number;
  maxFrameBytes: number;
  /** the entries changed (persist them) */
  changed(): void;
  acked(ack: Ack, entry: OutboxEntry, attempts: number): void;
  rejected(entry: OutboxEntry, code: string, message: string): void;
}

export type Outbox = ReturnType<typeof createOutbox>;

function frameOf(e: OutboxEntry): SendFrame {
  return e.room !== undefined ? { type: 'send', id: e.id, room: e.room, body: e.body } : { type: 'send', id: e.id, to: e.to, body: e.body };
}

function utf8Bytes(s: string): number {
  return new TextEncoder().encode(s).length;
}

export function createOutbox(deps: OutboxDeps) {
  const pending = new Map<string, PendingSend>();
  let idleWaiters: (() => void)[] = [];
  let isConnected = false;

  function settleIdle(): void {
    if (pending.size > 0 || idleWaiters.length === 0) return;
    const waiters = idleWaiters;
    idleWaiters = [];
    for (const w of waiters) w();
  }

  function clearTimer(p: PendingSend): void {
    if (p.timer !== undefined) clearTimeout(p.timer);
    p.timer = undefined;
  }

  /** Sends (or resends) one pending message on the current connection, if registered. */
  function transmit(p: PendingSend): void {
    clearTimer(p);
    if (!isConnected || !deps.write(frameOf(p.entry))) return; // sent after the next register
    p.attempts++;
    // No answer at all (a lost frame, a stuck instance): send again; the liveness checks catch a dead socket.
    p.timer = setTimeout(() => {
      p.timer = undefined;
      if (pending.has(p.entry.id)) transmit(p);
    }, deps.ackTimeoutMs);
  }

  function retryLater(p: PendingSend, delayMs: number): void {
    clearTimer(p);
    p.timer = setTimeout(() => {
      p.timer = undefined;
      if (pending.has(p.entry.id)) transmit(p);
    }, delayMs);
  }

  function refuse(p: PendingSend, code: string, message: string): void {
    clearTimer(p);
    pending.delete(p.entry.id);
    deps.changed();
    p.reject(new SendRejectedError(code, message));
    deps.rejected(p.entry, code, message);
    settleIdle();
  }

  function add(entry: OutboxEntry): Promise<Ack> {
    const existing = pending.get(entry.id);
    if (existing) return existing.promise; // the same id again: one message, one ack
    let p!: PendingSend;
    const promise = new Promise<Ack>((resolve, reject) => {
      p = { entry, attempts: 0, resolve, reject, promise: undefined as unknown as Promise<Ack> };
    });
    p.promise = promise;
    // Outbox entries restored from storage have no caller: their outcome is in the events.
    promise.catch(() => undefined);
    pending.set(entry.id, p);
    // The server closes the connection (1009) on an oversized frame: refuse it here instead.
    if (utf8Bytes(JSON.stringify(frameOf(entry))) > deps.maxFrameBytes) {
      refuse(p, ErrorCode.TOO_LARGE, `Too large to send: a frame may carry at most ${deps.maxFrameBytes} bytes (${Math.floor(deps.maxFrameBytes / 1024)} KiB).`);
      return promise;
    }
    deps.changed();
    transmit(p);
    return promise;
  }

  /** The answer to a send; false when it is not one of the pending sends' (a late answer to a resend). */
  function onAck(frame: Extract<ServerFrame, { type: 'ack' }>): boolean {
    const p = pending.get(frame.id);
    if (!p) return false;
    clearTimer(p);
    pending.delete(p.entry.id);
    deps.changed();
    const ack: Ack = { id: p.entry.id, msgId: frame.msgId, ts: frame.ts, seq: frame.seq };
    p.resolve(ack);
    deps.acked(ack, p.entry, p.attempts);
    settleIdle();
    return true;
  }

  /** An error answering a pending send; false when it answers something else. */
  function onError(frame: Extract<ServerFrame, { type: 'error' }>): boolean {
    const p = frame.id === undefined ? undefined : pending.get(frame.id);
    if (!p) return false;
    switch (frame.code) {
      case ErrorCode.RATE_LIMITED:
        retryLater(p, Math.max(100, frame.retryAfterMs ?? 1_000) + Math.round(Math.random() * 50));
        return true;
      case ErrorCode.UNAVAILABLE:
      case ErrorCode.INTERNAL:
        // The outcome is unknown: send again with the same id until acked.
        retryLater(p, backoffMs(Math.min(p.attempts, 8), RETRY_BASE_MS, RETRY_MAX_MS));
        return true;
      case ErrorCode.UNAUTHORIZED:
        // Not registered (any more: the token expired): the next register resends it.
        clearTimer(p);
        return true;
      default:
        // bad_request, too_large, forbidden, not_found: the same message would be refused again.
        refuse(p, frame.code, frame.message || frame.code);
        return true;
    }
  }

  return {
    add,
    onAck,
    onError,
    /** A connection registered: everything pending goes out on it. */
    connected(): void {
      isConnected = true;
      for (const p of pending.values()) transmit(p);
    },
    /** The connection is gone: the timers wait for the next one. */
    disconnected(): void {
      isConnected = false;
      for (const p of pending.values()) clearTimer(p);
    },
    /** Rejects every pending send (the client is closing); the persisted outbox keeps them for the next client. */
    rejectAll(err: Error): void {
      isConnected = false;
      for (const p of pending.values()) {
        clearTimer(p);
        p.reject(err);
      }
      pending.clear();
      settleIdle();
    },
    entries: (): OutboxEntry[] => [...pending.values()].map((p) => p.entry),
    size: () => pending.size,
    /** resolves once no send is pending, or rejects after timeoutMs */
    idle(timeoutMs: number): Promise<void> {
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
  };
}
