/**
 * The browser side of the wire protocol v1 (/work/shared/PROTOCOL.md): the
 * frames this page sends, and one parser for what the server sends. Nothing
 * inbound gets a type by assertion: a frame that does not parse is dropped
 * (and counted), never trusted.
 */

export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  POLICY_VIOLATION: 1008,
  TOO_LARGE: 1009,
  TRY_AGAIN_LATER: 1013,
  UNAUTHORIZED: 4401,
  REGISTER_TIMEOUT: 4408,
  TOO_MANY_CONNECTIONS: 4429,
} as const;

export const ErrorCode = {
  BAD_REQUEST: 'bad_request',
  UNAUTHORIZED: 'unauthorized',
  TOO_LARGE: 'too_large',
  RATE_LIMITED: 'rate_limited',
  UNAVAILABLE: 'unavailable',
  INTERNAL: 'internal',
  FORBIDDEN: 'forbidden',
  NOT_FOUND: 'not_found',
} as const;

/** Server default for MAX_FRAME_BYTES; a bigger frame closes the socket with 1009. */
export const MAX_FRAME_BYTES = 16 * 1024;
export const HISTORY_PAGE = 50;
export const SYNC_PAGE = 200;
export const DEFAULT_SYNC_INTERVAL_MS = 30_000;

export interface WireMessage {
  msgId: string;
  from: string;
  to: string;
  body: string;
  ts: number;
}

export type ClientFrame =
  | { type: 'register'; token: string }
  | { type: 'refresh'; id: string; token: string }
  | { type: 'send'; id: string; to: string; body: string }
  | { type: 'history'; id: string; with: string; limit: number; before?: string }
  | { type: 'sync'; id: string; after: string; limit: number };

export type ServerFrame =
  | { type: 'registered'; userId: string; instanceId: string; cursor?: string; syncIntervalMs?: number }
  | { type: 'refreshed'; exp: number }
  | { type: 'ack'; id: string; msgId: string; ts: number }
  | { type: 'message'; message: WireMessage }
  | { type: 'history'; id?: string; with: string; messages: WireMessage[]; more: boolean }
  | { type: 'sync'; id?: string; messages: WireMessage[]; cursor?: string; more: boolean }
  | { type: 'sync.hint' }
  | { type: 'error'; id?: string; code: string; message: string; retryAfterMs?: number };

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function str(o: Obj, k: string): string | undefined {
  const v = o[k];
  return typeof v === 'string' ? v : undefined;
}
function num(o: Obj, k: string): number | undefined {
  const v = o[k];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** A direct message; room messages (v1.1, `room` instead of `to`) are not shown by this page yet. */
export function parseWireMessage(v: unknown): WireMessage | undefined {
  if (!isObj(v)) return undefined;
  const msgId = str(v, 'msgId');
  const from = str(v, 'from');
  const to = str(v, 'to');
  const body = str(v, 'body');
  const ts = num(v, 'ts');
  if (!msgId || !from || !to || body === undefined || ts === undefined) return undefined;
  return { msgId, from, to, body, ts };
}

function parseMessages(v: unknown): WireMessage[] {
  if (!Array.isArray(v)) return [];
  const out: WireMessage[] = [];
  for (const m of v) {
    const parsed = parseWireMessage(m);
    if (parsed) out.push(parsed);
  }
  return out;
}

export function parseServerFrame(text: string): ServerFrame | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObj(v)) return undefined;
  const id = str(v, 'id');
  switch (v['type']) {
    case 'registered': {
      const userId = str(v, 'userId');
      if (!userId) return undefined;
      return {
        type: 'registered',
        userId,
        instanceId: str(v, 'instanceId') ?? '?',
        cursor: str(v, 'cursor'),
        syncIntervalMs: num(v, 'syncIntervalMs'),
      };
    }
    case 'refreshed': {
      const exp = num(v, 'exp');
      return exp === undefined ? undefined : { type: 'refreshed', exp };
    }
    case 'ack': {
      const msgId = str(v, 'msgId');
      const ts = num(v, 'ts');
      if (!id || !msgId || ts === undefined) return undefined;
      return { type: 'ack', id, msgId, ts };
    }
    case 'message': {
      const message = parseWireMessage(v);
      return message ? { type: 'message', message } : undefined;
    }
    case 'history': {
      const peer = str(v, 'with');
      if (!peer) return undefined;
      return { type: 'history', id, with: peer, messages: parseMessages(v['messages']), more: v['more'] === true };
    }
    case 'sync':
      return { type: 'sync', id, messages: parseMessages(v['messages']), cursor: str(v, 'cursor'), more: v['more'] === true };
    case 'sync.hint':
      return { type: 'sync.hint' };
    case 'error':
      return {
        type: 'error',
        id,
        code: str(v, 'code') ?? 'internal',
        message: str(v, 'message') ?? '',
        retryAfterMs: num(v, 'retryAfterMs'),
      };
    default:
      return undefined;
  }
}
