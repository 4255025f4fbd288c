/**
 * Requests answered by `id` (PROTOCOL.md v1.1: "its answer and any error
 * carry the same id"): each gets a fresh id and resolves with the first
 * frame that carries it, or rejects on an `error` with it, on its timeout, or
 * when the connection goes away first.
 */
import { RequestError } from './errors.js';
import { isFrameOf, type InboundFrame } from './frames.js';
import type { ClientFrame } from './wire.js';

/** A client frame without its `id` (the request gives it one); a frame type this client does not know yet is accepted too. */
export type RequestFrame = DistributiveOmit<ClientFrame, 'id'> | { type: string; id?: undefined; [field: string]: unknown };
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

interface PendingRequest {
  type: string;
  resolve(frame: InboundFrame): void;
  reject(err: RequestError): void;
  timer: ReturnType<typeof setTimeout>;
}

export interface RequestsDeps {
  /** writes the frame on a registered connection; false when there is none */
  write(frame: object): boolean;
  /** prefix of request ids (unique per client) */
  idPrefix: string;
  timeoutMs: number;
}

export type Requests = ReturnType<typeof createRequests>;

export function createRequests(deps: RequestsDeps) {
  const pending = new Map<string, PendingRequest>();
  let seq = 0;

  function send(frame: RequestFrame, timeoutMs = deps.timeoutMs): Promise<InboundFrame> {
    const id = `${deps.idPrefix}${++seq}`;
    return new Promise((resolve, reject) => {
      if (!deps.write({ ...frame, id })) {
        reject(new RequestError('disconnected', `${frame.type}: not connected`));
        return;
      }
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new RequestError('timeout', `${frame.type}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, { type: frame.type, resolve, reject, timer });
    });
  }

  /** Settles the request this frame answers; false when it answers none. */
  function settle(frame: InboundFrame): boolean {
    const id = (frame as { id?: unknown }).id;
    const r = typeof id === 'string' ? pending.get(id) : undefined;
    if (!r || typeof id !== 'string') return false;
    pending.delete(id);
    clearTimeout(r.timer);
    if (isFrameOf(frame, 'error')) r.reject(new RequestError(frame.code, frame.message || frame.code, frame.retryAfterMs));
    else r.resolve(frame);
    return true;
  }

  /** Rejects every request waiting for an answer (the connection went away, or the client closed). */
  function failAll(err: RequestError): void {
    for (const r of pending.values()) {
      clearTimeout(r.timer);
      r.reject(err);
    }
    pending.clear();
  }

  return { send, settle, failAll };
}
