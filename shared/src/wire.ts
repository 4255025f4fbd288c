/**
 * SimpleChat wire protocol v1 (docs/PROTOCOL.md) as plain data: close and error
 * codes, limits, and the frame types both ways. The server (through
 * ./protocol), the Node clients and the browser client all take them from
 * here. It imports nothing and uses neither Node nor DOM APIs: the client
 * package (client/) compiles it into both its builds (client/tsconfig.wire.*.json),
 * so the browser loads it as /client/esm/wire.js.
 */

export const PROTOCOL_VERSION = 1;

export const CloseCode = {
  GOING_AWAY: 1001,
  POLICY_VIOLATION: 1008,
  TOO_LARGE: 1009,
  TRY_AGAIN_LATER: 1013,
  UNAUTHORIZED: 4401,
  REGISTER_TIMEOUT: 4408,
  TOO_MANY_CONNECTIONS: 4429,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

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
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const ERROR_CODES: ReadonlySet<string> = new Set(Object.values(ErrorCode));

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && ERROR_CODES.has(value);
}

export const USER_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
export const USER_ID_RULE = '1-64 characters of A-Z a-z 0-9 _ . -';
/**
 * A storage position: a seq ("1234"), or one per storage partition written as the smallest
 * seq and, for each partition past it, the partition and its distance from it
 * ("1234.2_40.7_3": partition 2 at 1274, partition 7 at 1237, every other at 1234).
 * Clients treat it as opaque.
 */
export const CURSOR_RE = /^\d{1,19}(?:\.\d{1,2}_\d{1,19}){0,64}$/;
/** The largest position storage hands out (a Postgres bigint). */
export const MAX_CURSOR = 9_223_372_036_854_775_807n;
/** storage partitions a cursor may name (0..63) */
export const CURSOR_PARTITIONS = 64;
/** A msgId as a client may echo it (`history.before`): a ULID, the form this server issues; any case. */
export const MSG_ID_REF_RE = /^[0-9A-HJKMNP-TV-Z]{26}$/i;

export function isCursor(value: string): boolean {
  if (!CURSOR_RE.test(value)) return false;
  const [base, ...parts] = value.split('.');
  const floor = BigInt(base as string);
  if (floor > MAX_CURSOR) return false;
  const named = new Set<number>();
  for (const part of parts) {
    const [p, delta] = part.split('_');
    const partition = Number(p);
    if (partition >= CURSOR_PARTITIONS || named.has(partition) || floor + BigInt(delta as string) > MAX_CURSOR) return false;
    named.add(partition);
  }
  return true;
}

export const HISTORY_LIMIT = { min: 1, max: 200, default: 50 } as const;
export const SYNC_LIMIT = { min: 1, max: 500, default: 200 } as const;

/** Defaults of the server settings MAX_FRAME_BYTES, MAX_BODY_CHARS (code points) and SYNC_INTERVAL_MS. */
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024;
export const DEFAULT_MAX_BODY_CHARS = 4000;
export const DEFAULT_SYNC_INTERVAL_MS = 30_000;

export function isUserId(value: unknown): value is string {
  return typeof value === 'string' && USER_ID_RE.test(value);
}

// ---- client -> server ------------------------------------------------------------
// A client frame as parseClientFrame (./protocol) returns it: a field the server
// defaults (`limit`) is required here, so a client built on these types always
// sends it. Each has a zod schema in ./protocol, checked against it at compile time.

export interface RegisterFrame {
  type: 'register';
  id?: string;
  token: string;
}

export interface RefreshFrame {
  type: 'refresh';
  id?: string;
  token: string;
}

/** To a user (`to`) or a room (`room`): exactly one of them. */
export type SendFrame = { type: 'send'; id: string; body: string } & ({ to: string; room?: undefined } | { room: string; to?: undefined });

/** A direct conversation (`with`) or a room (`room`): exactly one of them. */
export type HistoryFrame = {
  type: 'history';
  id?: string;
  /** a msgId */
  before?: string;
  limit: number;
} & ({ with: string; room?: undefined } | { room: string; with?: undefined });

export interface SyncFrame {
  type: 'sync';
  id?: string;
  after?: string;
  limit: number;
}

export interface RoomCreateFrame {
  type: 'room.create';
  id?: string;
  name: string;
  members: string[];
}

export interface RoomAddFrame {
  type: 'room.add';
  id?: string;
  room: string;
  userId: string;
}

export interface RoomRemoveFrame {
  type: 'room.remove';
  id?: string;
  room: string;
  userId: string;
}

export interface RoomLeaveFrame {
  type: 'room.leave';
  id?: string;
  room: string;
}

export interface RoomGetFrame {
  type: 'room.get';
  id?: string;
  room: string;
}

/** Every current member's `delivered` and `read` marks in a room (an addition to the contract). */
export interface RoomMarksFrame {
  type: 'room.marks';
  id?: string;
  room: string;
}

export interface RoomListFrame {
  type: 'room.list';
  id?: string;
  after?: string;
}

export interface PresenceWatchFrame {
  type: 'presence.watch';
  id?: string;
  users: string[];
}

export interface PresenceUnwatchFrame {
  type: 'presence.unwatch';
  id?: string;
  users: string[];
}

/** Typing into a direct conversation (`to`) or a room (`room`): exactly one of them. */
export type TypingFrame = { type: 'typing'; id?: string } & ({ to: string; room?: undefined } | { room: string; to?: undefined });

/** A mark: every message of the conversation at a position <= upTo was received (`delivered`) or shown (`read`). */
export type ReceiptFrame = { type: 'receipt'; id?: string; kind: ReceiptKind; upTo: number } & ({ with: string; room?: undefined } | { room: string; with?: undefined });

export interface ConversationsFrame {
  type: 'conversations';
  id?: string;
  /** the `ts` of the last message of the previous page's last conversation */
  before?: number;
}

/** Mutes notifications of a conversation until `until` (ms since the epoch); 0 unmutes. */
export type MuteFrame = { type: 'mute'; id?: string; until: number } & ({ with: string; room?: undefined } | { room: string; with?: undefined });

export type ClientFrame =
  | RegisterFrame
  | RefreshFrame
  | SendFrame
  | HistoryFrame
  | SyncFrame
  | RoomCreateFrame
  | RoomAddFrame
  | RoomRemoveFrame
  | RoomLeaveFrame
  | RoomGetFrame
  | RoomMarksFrame
  | RoomListFrame
  | PresenceWatchFrame
  | PresenceUnwatchFrame
  | TypingFrame
  | ReceiptFrame
  | ConversationsFrame
  | MuteFrame;
export type ClientFrameType = ClientFrame['type'];

// ---- server -> client ------------------------------------------------------------

/** A message as clients see it (`message` frames, history and sync entries). */
export interface WireMessage {
  msgId: string;
  from: string;
  /** the recipient of a direct message */
  to?: string;
  /** the room of a room message */
  room?: string;
  body: string;
  ts: number;
  /** the message's position in its conversation */
  seq: number;
}

/**
 * What a notification webhook posts (PROTOCOL.md v1.2): one recipient's missed messages, at
 * most 100, as in `sync` (without `body` when NOTIFY_INCLUDE_BODY=false).
 */
export interface MissedMessagesEvent {
  type: 'messages.missed';
  eventId: string;
  recipient: string;
  messages: (Omit<WireMessage, 'body'> & { body?: string })[];
  ts: number;
}

export type ServerFrame =
  | { type: 'registered'; id?: string; userId: string; instanceId: string; cursor?: string; syncIntervalMs: number }
  | { type: 'refreshed'; id?: string; exp: number }
  | { type: 'ack'; id: string; msgId: string; ts: number; seq: number }
  | ({ type: 'message' } & WireMessage)
  | ({ type: 'history'; id?: string; messages: (WireMessage & { type?: 'message' })[]; more: boolean; /** always sent by this server */ empty?: number[] } & ({ with: string } | { room: string }))
  | { type: 'sync'; id?: string; messages: (WireMessage & { type?: 'message' })[]; cursor: string; more: boolean; /** always sent by this server */ empty?: EmptyPositions[] }
  | { type: 'sync.hint' }
  | ({ type: 'room.info'; id?: string } & RoomInfo)
  | { type: 'room.left'; id?: string; room: string }
  | { type: 'rooms'; id?: string; rooms: RoomSummary[]; more: boolean }
  | RoomEventFrame
  | { type: 'presence'; id?: string; users: Record<string, PresenceState> }
  | ({ type: 'typing'; from: string } & ({ to: string } | { room: string }))
  | { type: 'receipt'; kind: ReceiptKind; by: string; with: string; upTo: number; ts: number }
  | { type: 'receipt'; kind: ReceiptKind; room: string; marks: Record<string, number>; ts: number }
  | ({ type: 'room.marks'; id?: string } & MemberMarks)
  | { type: 'conversations'; id?: string; conversations: ConversationSummary[]; more: boolean }
  | ({ type: 'muted'; id?: string; until: number } & ({ with: string } | { room: string }))
  | { type: 'error'; id?: string; code: ErrorCode; message: string; retryAfterMs?: number };

// ---- rooms ------------------------------------------------------------------------

/** Room ids as the server hands them out (`r_` and a ULID); anything else of this shape is simply not found. */
export const ROOM_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
export const ROOM_NAME_MAX_CHARS = 100;
/** user ids in one room.create frame (or server API request) */
export const MAX_IDS_PER_FRAME = 200;
/** rooms in one room.list answer */
export const ROOMS_PER_PAGE = 200;

export interface RoomInfo {
  room: string;
  name: string;
  owner: string;
  members: string[];
}

export interface RoomSummary {
  room: string;
  name: string;
  owner: string;
  memberCount: number;
}

export type RoomEventKind = 'created' | 'added' | 'removed' | 'left' | 'owner';

export interface RoomEventFrame {
  type: 'room.event';
  room: string;
  event: RoomEventKind;
  userId: string;
  /** the member who made the change; null for a change through the server API */
  by: string | null;
  via?: 'api';
  ts: number;
}

/** Positions of one conversation that will never hold a message (PROTOCOL.md "Positions"). */
export type EmptyPositions = ({ with: string } | { room: string }) & { seqs: number[] };

// ---- presence and typing -----------------------------------------------------------

/** users named in one presence.watch or presence.unwatch frame */
export const PRESENCE_USERS_PER_FRAME = 200;
/** users one connection may watch at once */
export const PRESENCE_USERS_PER_CONNECTION = 500;
/** typing frames relayed per user and conversation per second; the rest are dropped */
export const TYPING_PER_SEC = 2;

/** A watched user's state: `lastSeen` (ms since the epoch) is when its last connection went, when known. */
export type PresenceState = { online: true } | { online: false; lastSeen?: number };

// ---- receipts and conversations ----------------------------------------------------

export type ReceiptKind = 'delivered' | 'read';
export const RECEIPT_KINDS: readonly ReceiptKind[] = ['delivered', 'read'];
/** conversations in one `conversations` answer */
export const CONVERSATIONS_PER_PAGE = 200;

/**
 * A room's marks: each current member's highest `delivered` and `read` position, starting where
 * it last joined (a read mark counts as delivered, so `delivered` is at least `read`).
 */
export interface MemberMarks {
  room: string;
  delivered: Record<string, number>;
  read: Record<string, number>;
}

/** One line of the conversation list: a direct conversation (`with`) or a room (`room`). */
export type ConversationSummary = ({ with: string } | { room: string }) & {
  /** the newest stored message */
  last: WireMessage;
  /** stored messages of others above the caller's read mark */
  unread: number;
  readUpTo: number;
  deliveredUpTo: number;
  /** the other side's marks, in a direct conversation */
  peerReadUpTo?: number;
  peerDeliveredUpTo?: number;
  muted: boolean;
};

