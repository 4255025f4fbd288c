/**
 * The browser's parser for what the server sends (wire protocol v1,
 * docs/PROTOCOL.md). The frame types, codes and limits are the server's own,
 * from shared/src/wire.ts: `./wire.js` resolves there for tsc (rootDirs in
 * ../tsconfig.json) and, in the browser, to the copy tsconfig.wire.json emits
 * next to this page's modules. Nothing inbound gets a type by assertion: a
 * frame that does not parse is dropped, never trusted.
 */

import { DEFAULT_SYNC_INTERVAL_MS, ErrorCode, isErrorCode, type ServerFrame, type WireMessage } from './wire.js';

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
  const seq = num(v, 'seq');
  if (!msgId || !from || !to || body === undefined || ts === undefined || seq === undefined) return undefined;
  return { msgId, from, to, body, ts, seq };
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
        syncIntervalMs: num(v, 'syncIntervalMs') ?? DEFAULT_SYNC_INTERVAL_MS,
      };
    }
    case 'refreshed': {
      const exp = num(v, 'exp');
      return exp === undefined ? undefined : { type: 'refreshed', exp };
    }
    case 'ack': {
      const msgId = str(v, 'msgId');
      const ts = num(v, 'ts');
      const seq = num(v, 'seq');
      if (!id || !msgId || ts === undefined || seq === undefined) return undefined;
      return { type: 'ack', id, msgId, ts, seq };
    }
    case 'message': {
      const message = parseWireMessage(v);
      return message ? { type: 'message', ...message } : undefined;
    }
    case 'history': {
      const peer = str(v, 'with');
      if (!peer) return undefined;
      return { type: 'history', id, with: peer, messages: parseMessages(v['messages']), more: v['more'] === true };
    }
    case 'sync': {
      const cursor = str(v, 'cursor');
      if (cursor === undefined) return undefined;
      return { type: 'sync', id, messages: parseMessages(v['messages']), cursor, more: v['more'] === true };
    }
    case 'sync.hint':
      return { type: 'sync.hint' };
    case 'error':
      return {
        type: 'error',
        id,
        // a code this page does not know yet reads as a server error
        code: isErrorCode(v['code']) ? v['code'] : ErrorCode.INTERNAL,
        message: str(v, 'message') ?? '',
        retryAfterMs: num(v, 'retryAfterMs'),
      };
    default:
      return undefined;
  }
}
