/**
 * The client's parser for what the server sends (wire protocol v1,
 * docs/PROTOCOL.md). The frame types, codes and limits are the server's own,
 * from shared/src/wire.ts (`./wire.js`: rootDirs in the package's tsconfig,
 * and tsconfig.wire.*.json emits it next to this package's modules). Nothing
 * inbound gets a type by assertion: a frame of a known type that does not
 * parse is dropped, never trusted; a frame of a type this client does not
 * know yet is passed on as it came (an UnknownFrame), for the application.
 */

import {
  DEFAULT_SYNC_INTERVAL_MS,
  ErrorCode,
  isErrorCode,
  type ConversationSummary,
  type EmptyPositions,
  type PresenceState,
  type ReceiptKind,
  type RoomEventKind,
  type RoomInfo,
  type RoomSummary,
  type ServerFrame,
  type WireMessage,
} from './wire.js';

/** A server frame of a type this client does not parse (a newer protocol's, for one). */
export interface UnknownFrame {
  type: string;
  [field: string]: unknown;
}

/** What the server sent: a parsed frame of a known type, or one of a type the client does not know. */
export type InboundFrame = ServerFrame | UnknownFrame;

/** The frame types parseServerFrame checks field by field. */
const KNOWN_TYPES: ReadonlySet<string> = new Set<ServerFrame['type']>(['registered', 'refreshed', 'ack', 'message', 'history', 'sync', 'sync.hint', 'room.info', 'room.left', 'rooms', 'room.event', 'room.marks', 'error', 'presence', 'typing', 'receipt', 'conversations', 'muted']);

/** Narrows a frame to one known type (parseServerFrame has checked its fields). */
export function isFrameOf<T extends ServerFrame['type']>(frame: InboundFrame, type: T): frame is Extract<ServerFrame, { type: T }> {
  return frame.type === type;
}

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

/** A direct message (`to`) or a room message (`room`): exactly one of them. */
export function parseWireMessage(v: unknown): WireMessage | undefined {
  if (!isObj(v)) return undefined;
  const msgId = str(v, 'msgId');
  const from = str(v, 'from');
  const to = str(v, 'to');
  const room = str(v, 'room');
  const body = str(v, 'body');
  const ts = num(v, 'ts');
  const seq = num(v, 'seq');
  if (!msgId || !from || body === undefined || ts === undefined || seq === undefined) return undefined;
  if (to && room === undefined) return { msgId, from, to, body, ts, seq };
  if (room && to === undefined) return { msgId, from, room, body, ts, seq };
  return undefined;
}

function strings(v: unknown): string[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: string[] = [];
  for (const x of v) {
    if (typeof x !== 'string') return undefined;
    out.push(x);
  }
  return out;
}

function parseRoomInfo(v: Obj): RoomInfo | undefined {
  const room = str(v, 'room');
  const name = str(v, 'name');
  const owner = str(v, 'owner');
  const members = strings(v['members']);
  if (!room || name === undefined || !owner || !members) return undefined;
  return { room, name, owner, members };
}

function parseRoomSummaries(v: unknown): RoomSummary[] {
  if (!Array.isArray(v)) return [];
  const out: RoomSummary[] = [];
  for (const r of v) {
    if (!isObj(r)) continue;
    const room = str(r, 'room');
    const name = str(r, 'name');
    const owner = str(r, 'owner');
    const memberCount = num(r, 'memberCount');
    if (room && name !== undefined && owner && memberCount !== undefined) out.push({ room, name, owner, memberCount });
  }
  return out;
}

const ROOM_EVENT_KINDS: ReadonlySet<string> = new Set<RoomEventKind>(['created', 'added', 'removed', 'left', 'owner']);

function isRoomEventKind(v: unknown): v is RoomEventKind {
  return typeof v === 'string' && ROOM_EVENT_KINDS.has(v);
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

function positions(v: unknown): number[] {
  return Array.isArray(v) ? v.filter((n): n is number => typeof n === 'number' && Number.isInteger(n) && n > 0) : [];
}

function parseEmptyByConversation(v: unknown): EmptyPositions[] {
  if (!Array.isArray(v)) return [];
  const out: EmptyPositions[] = [];
  for (const e of v) {
    if (!isObj(e)) continue;
    const peer = str(e, 'with');
    const room = str(e, 'room');
    const seqs = positions(e['seqs']);
    if (peer) out.push({ with: peer, seqs });
    else if (room) out.push({ room, seqs });
  }
  return out;
}

function isReceiptKind(v: unknown): v is ReceiptKind {
  return v === 'delivered' || v === 'read';
}

function parsePresenceStates(v: unknown): Record<string, PresenceState> | undefined {
  if (!isObj(v)) return undefined;
  const out: Record<string, PresenceState> = {};
  for (const [user, p] of Object.entries(v)) {
    if (!isObj(p) || typeof p['online'] !== 'boolean') continue;
    const lastSeen = num(p, 'lastSeen');
    out[user] = p['online'] ? { online: true } : lastSeen === undefined ? { online: false } : { online: false, lastSeen };
  }
  return out;
}

function parseMarks(v: unknown): Record<string, number> | undefined {
  if (!isObj(v)) return undefined;
  const out: Record<string, number> = {};
  for (const [user, upTo] of Object.entries(v)) if (typeof upTo === 'number' && Number.isInteger(upTo) && upTo >= 0) out[user] = upTo;
  return out;
}

function parseConversations(v: unknown): ConversationSummary[] {
  if (!Array.isArray(v)) return [];
  const out: ConversationSummary[] = [];
  for (const c of v) {
    if (!isObj(c)) continue;
    const last = parseWireMessage(c['last']);
    const unread = num(c, 'unread');
    const readUpTo = num(c, 'readUpTo');
    const deliveredUpTo = num(c, 'deliveredUpTo');
    if (!last || unread === undefined || readUpTo === undefined || deliveredUpTo === undefined) continue;
    const common = { last, unread, readUpTo, deliveredUpTo, muted: c['muted'] === true };
    const peer = str(c, 'with');
    const room = str(c, 'room');
    if (peer) out.push({ with: peer, ...common, peerReadUpTo: num(c, 'peerReadUpTo') ?? 0, peerDeliveredUpTo: num(c, 'peerDeliveredUpTo') ?? 0 });
    else if (room) out.push({ room, ...common });
  }
  return out;
}

/** Parses one text frame; undefined for anything that is not a frame, or a known frame type with bad fields. */
export function parseServerFrame(text: string): InboundFrame | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObj(v) || typeof v['type'] !== 'string') return undefined;
  if (!KNOWN_TYPES.has(v['type'])) return { ...v, type: v['type'] };
  const id = str(v, 'id');
  switch (v['type']) {
    case 'registered': {
      const userId = str(v, 'userId');
      if (!userId) return undefined;
      return {
        type: 'registered',
        id,
        userId,
        instanceId: str(v, 'instanceId') ?? '?',
        cursor: str(v, 'cursor'),
        syncIntervalMs: num(v, 'syncIntervalMs') ?? DEFAULT_SYNC_INTERVAL_MS,
      };
    }
    case 'refreshed': {
      const exp = num(v, 'exp');
      return exp === undefined ? undefined : { type: 'refreshed', id, exp };
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
      const room = str(v, 'room');
      const messages = parseMessages(v['messages']);
      const more = v['more'] === true;
      const empty = positions(v['empty']);
      if (peer) return { type: 'history', id, with: peer, messages, more, empty };
      if (room) return { type: 'history', id, room, messages, more, empty };
      return undefined;
    }
    case 'sync': {
      const cursor = str(v, 'cursor');
      if (cursor === undefined) return undefined;
      return { type: 'sync', id, messages: parseMessages(v['messages']), cursor, more: v['more'] === true, empty: parseEmptyByConversation(v['empty']) };
    }
    case 'presence': {
      const users = parsePresenceStates(v['users']);
      return users ? { type: 'presence', id, users } : undefined;
    }
    case 'typing': {
      const from = str(v, 'from');
      const to = str(v, 'to');
      const room = str(v, 'room');
      if (!from) return undefined;
      if (to) return { type: 'typing', from, to };
      return room ? { type: 'typing', from, room } : undefined;
    }
    case 'receipt': {
      const kind = v['kind'];
      const ts = num(v, 'ts') ?? 0;
      if (!isReceiptKind(kind)) return undefined;
      const room = str(v, 'room');
      const marks = parseMarks(v['marks']);
      if (room && marks) return { type: 'receipt', kind, room, marks, ts };
      const by = str(v, 'by');
      const peer = str(v, 'with');
      const upTo = num(v, 'upTo');
      return by && peer && upTo !== undefined ? { type: 'receipt', kind, by, with: peer, upTo, ts } : undefined;
    }
    case 'room.marks': {
      const room = str(v, 'room');
      const delivered = parseMarks(v['delivered']);
      const read = parseMarks(v['read']);
      return room && delivered && read ? { type: 'room.marks', id, room, delivered, read } : undefined;
    }
    case 'conversations':
      return { type: 'conversations', id, conversations: parseConversations(v['conversations']), more: v['more'] === true };
    case 'muted': {
      const until = num(v, 'until');
      const peer = str(v, 'with');
      const room = str(v, 'room');
      if (until === undefined) return undefined;
      if (peer) return { type: 'muted', id, with: peer, until };
      return room ? { type: 'muted', id, room, until } : undefined;
    }
    case 'sync.hint':
      return { type: 'sync.hint' };
    case 'room.info': {
      const info = parseRoomInfo(v);
      return info ? { type: 'room.info', id, ...info } : undefined;
    }
    case 'room.left': {
      const room = str(v, 'room');
      return room ? { type: 'room.left', id, room } : undefined;
    }
    case 'rooms':
      return { type: 'rooms', id, rooms: parseRoomSummaries(v['rooms']), more: v['more'] === true };
    case 'room.event': {
      const room = str(v, 'room');
      const event = v['event'];
      const userId = str(v, 'userId');
      const by = v['by'];
      const ts = num(v, 'ts');
      if (!room || !isRoomEventKind(event) || !userId || ts === undefined || (by !== null && typeof by !== 'string')) return undefined;
      return { type: 'room.event', room, event, userId, by, ...(v['via'] === 'api' ? { via: 'api' as const } : {}), ts };
    }
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
