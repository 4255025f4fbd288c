/**
 * SimpleChat wire protocol v1 (docs/PROTOCOL.md): the one parser for inbound
 * client frames, and (re-exported from ./wire, shared with the browser client)
 * frame types, limits, close and error codes. Nothing inbound is typed by
 * assertion: it goes through parseClientFrame and comes out either as a typed
 * frame or as a protocol error to send back.
 */
import { z } from 'zod';
import { ErrorCode, HISTORY_LIMIT, MAX_IDS_PER_FRAME, PRESENCE_USERS_PER_FRAME, MSG_ID_REF_RE, ROOM_ID_RE, ROOM_NAME_MAX_CHARS, SYNC_LIMIT, USER_ID_RE, USER_ID_RULE, isCursor, type ClientFrame, type ClientFrameType, type HistoryFrame, type MuteFrame, type ReceiptFrame, type SendFrame, type TypingFrame, RECEIPT_KINDS } from './wire';

export * from './wire';

const frameId = z.string().min(1, 'must be 1-64 characters').max(64, 'must be 1-64 characters');
const userId = z.string().regex(USER_ID_RE, `must be a user id (${USER_ID_RULE})`);
// ULIDs are case-insensitive: compared as stored (upper case), a lower-case copy would page from the wrong place.
const msgIdRef = z.string().regex(MSG_ID_REF_RE, 'must be the msgId of a message').transform((s) => s.toUpperCase());
const cursor = z.string().refine(isCursor, 'must be a cursor string returned by the server');
const limit = (l: { min: number; max: number; default: number }) =>
  z.number().int(`must be an integer from ${l.min} to ${l.max}`).min(l.min, `must be from ${l.min} to ${l.max}`).max(l.max, `must be from ${l.min} to ${l.max}`).default(l.default);

const token = z.string().min(1, 'must not be empty').max(8192, 'must be at most 8192 characters');
const registerSchema = z.object({ type: z.literal('register'), id: frameId.optional(), token });
const refreshSchema = z.object({ type: z.literal('refresh'), id: frameId.optional(), token });
const roomId = z.string().regex(ROOM_ID_RE, 'must be a room id as the server returned it');

/** Exactly one of two fields (a user or a room). */
function oneOf<A extends string, B extends string>(a: A, b: B) {
  return (frame: Partial<Record<A | B, unknown>>, ctx: z.RefinementCtx) => {
    const count = (frame[a] === undefined ? 0 : 1) + (frame[b] === undefined ? 0 : 1);
    if (count !== 1) ctx.addIssue({ code: 'custom', path: [frame[a] === undefined ? a : b], message: `needs exactly one of '${a}' and '${b}'` });
  };
}

// A user or a room: checked by oneOf, then typed as the union the field pair makes.
const sendSchema = z
  .object({ type: z.literal('send'), id: frameId, to: userId.optional(), room: roomId.optional(), body: z.string() })
  .superRefine(oneOf('to', 'room'))
  .transform((f) => f as SendFrame);
const historySchema = z
  .object({ type: z.literal('history'), id: frameId.optional(), with: userId.optional(), room: roomId.optional(), before: msgIdRef.optional(), limit: limit(HISTORY_LIMIT) })
  .superRefine(oneOf('with', 'room'))
  .transform((f) => f as HistoryFrame);
const syncSchema = z.object({ type: z.literal('sync'), id: frameId.optional(), after: cursor.optional(), limit: limit(SYNC_LIMIT) });
// Name length and member count are checked after the schema: beyond the limits is `too_large`, not `bad_request`.
const roomCreateSchema = z.object({ type: z.literal('room.create'), id: frameId.optional(), name: z.string(), members: z.array(userId).default([]) });
const roomAddSchema = z.object({ type: z.literal('room.add'), id: frameId.optional(), room: roomId, userId });
const roomRemoveSchema = z.object({ type: z.literal('room.remove'), id: frameId.optional(), room: roomId, userId });
const roomLeaveSchema = z.object({ type: z.literal('room.leave'), id: frameId.optional(), room: roomId });
const roomGetSchema = z.object({ type: z.literal('room.get'), id: frameId.optional(), room: roomId });
const roomMarksSchema = z.object({ type: z.literal('room.marks'), id: frameId.optional(), room: roomId });
const roomListSchema = z.object({ type: z.literal('room.list'), id: frameId.optional(), after: roomId.optional() });

// More users than a frame may name is `too_large`, checked after the schema.
const presenceUsers = z.array(userId).min(1, 'must name at least one user');
const presenceWatchSchema = z.object({ type: z.literal('presence.watch'), id: frameId.optional(), users: presenceUsers });
const presenceUnwatchSchema = z.object({ type: z.literal('presence.unwatch'), id: frameId.optional(), users: presenceUsers });
const typingSchema = z
  .object({ type: z.literal('typing'), id: frameId.optional(), to: userId.optional(), room: roomId.optional() })
  .superRefine(oneOf('to', 'room'))
  .transform((f) => f as TypingFrame);

const receiptSchema = z
  .object({
    type: z.literal('receipt'),
    id: frameId.optional(),
    kind: z.enum(RECEIPT_KINDS as [ReceiptFrame['kind'], ...ReceiptFrame['kind'][]], { message: "must be 'delivered' or 'read'" }),
    with: userId.optional(),
    room: roomId.optional(),
    upTo: z.number().int('must be a position (an integer from 0)').min(0, 'must be a position (an integer from 0)').max(Number.MAX_SAFE_INTEGER, 'must be a position (an integer from 0)'),
  })
  .superRefine(oneOf('with', 'room'))
  .transform((f) => f as ReceiptFrame);
const conversationsSchema = z.object({ type: z.literal('conversations'), id: frameId.optional(), before: z.number().int('must be a ts (ms since the epoch)').positive('must be a ts (ms since the epoch)').optional() });

const muteSchema = z
  .object({ type: z.literal('mute'), id: frameId.optional(), with: userId.optional(), room: roomId.optional(), until: z.number().int('must be a ts (ms since the epoch), or 0 to unmute').min(0, 'must be a ts (ms since the epoch), or 0 to unmute').max(Number.MAX_SAFE_INTEGER, 'must be a ts (ms since the epoch), or 0 to unmute') })
  .superRefine(oneOf('with', 'room'))
  .transform((f) => f as MuteFrame);

const schemas = {
  register: registerSchema,
  refresh: refreshSchema,
  send: sendSchema,
  history: historySchema,
  sync: syncSchema,
  'room.create': roomCreateSchema,
  'room.add': roomAddSchema,
  'room.remove': roomRemoveSchema,
  'room.leave': roomLeaveSchema,
  'room.get': roomGetSchema,
  'room.marks': roomMarksSchema,
  'room.list': roomListSchema,
  'presence.watch': presenceWatchSchema,
  'presence.unwatch': presenceUnwatchSchema,
  typing: typingSchema,
  receipt: receiptSchema,
  conversations: conversationsSchema,
  mute: muteSchema,
} as const satisfies { [T in ClientFrameType]: z.ZodType<Extract<ClientFrame, { type: T }>> };

// Compile-time check that each schema parses to exactly its frame type in ./wire (the
// `satisfies` above only says assignable): a mismatch names the frame type here.
type IsSameShape<A, B> = [A] extends [B] ? ([B] extends [A] ? ([keyof A] extends [keyof B] ? ([keyof B] extends [keyof A] ? true : false) : false) : false) : false;
type MismatchedFrameTypes = { [T in ClientFrameType]: IsSameShape<z.output<(typeof schemas)[T]>, Extract<ClientFrame, { type: T }>> extends true ? never : T }[ClientFrameType];
type AssertTrue<T extends true> = T;
type ClientFrameSchemasMatch = AssertTrue<[MismatchedFrameTypes] extends [never] ? true : MismatchedFrameTypes>;

export interface ProtocolError {
  code: ErrorCode;
  message: string;
  id?: string;
  /** the fields found wrong, when the error is about fields */
  fields?: string[];
}

export type ParseResult = { ok: true; frame: ClientFrame } | ({ ok: false } & ProtocolError);

export interface FrameLimits {
  maxBodyChars: number;
}

/** Code points, not UTF-16 units: an emoji counts once. */
export function codePointLength(s: string, stopAfter = Infinity): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    if (++n > stopAfter) return n;
  }
  return n;
}

// C0 controls except tab, LF, CR; DEL and C1 controls.
const FORBIDDEN_CONTROL_RE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/;

/** Checks a message body: null when acceptable, else the error to answer with. */
export function checkBody(body: string, maxBodyChars: number): Omit<ProtocolError, 'id'> | null {
  if (body.length === 0) return { code: ErrorCode.BAD_REQUEST, message: 'body must not be empty' };
  // A UTF-16 length within the limit means the code point count is too.
  if (body.length > maxBodyChars && codePointLength(body, maxBodyChars) > maxBodyChars) {
    return { code: ErrorCode.TOO_LARGE, message: `body is longer than ${maxBodyChars} characters; split it into several messages` };
  }
  if (FORBIDDEN_CONTROL_RE.test(body)) {
    return { code: ErrorCode.BAD_REQUEST, message: 'body contains a control character (only tab, line feed and carriage return are allowed)' };
  }
  if (!body.isWellFormed()) {
    return { code: ErrorCode.BAD_REQUEST, message: 'body contains a lone surrogate (invalid Unicode)' };
  }
  return null;
}

/** JSON types a field can be expected to have, as a client reads them (an integer's rule says its range). */
const TYPE_NAMES: Record<string, string> = { string: 'a string', number: 'a number', boolean: 'true or false', object: 'an object', array: 'an array' };

function describeIssue(type: string, raw: Record<string, unknown>, issue: z.core.$ZodIssue): string {
  const field = issue.path.length > 0 ? issue.path.join('.') : undefined;
  if (!field) return `${type}: ${issue.message}`;
  if (issue.path.length === 1 && !Object.hasOwn(raw, field)) return `${type}: field '${field}' is required`;
  const typeName = issue.code === 'invalid_type' ? TYPE_NAMES[issue.expected] : undefined;
  if (typeName) return `${type}: field '${field}' must be ${typeName}`;
  return `${type}: field '${field}' ${issue.message}`;
}

/** The string `id` of a frame, for an error about a frame that is not parsed further. Never throws. */
export function frameIdOf(text: string): string | undefined {
  try {
    const value: unknown = JSON.parse(text);
    const id = typeof value === 'object' && value !== null ? (value as { id?: unknown }).id : undefined;
    return typeof id === 'string' ? id : undefined;
  } catch {
    return undefined;
  }
}

/** Parses one text frame from a client. Never throws. */
export function parseClientFrame(text: string, limits: FrameLimits): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, code: ErrorCode.BAD_REQUEST, message: 'frame is not valid JSON; send one JSON object per text frame' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, code: ErrorCode.BAD_REQUEST, message: 'frame must be a JSON object with a string field "type"' };
  }
  const raw = value as Record<string, unknown>;
  const id = typeof raw.id === 'string' ? raw.id : undefined;
  const fail = (code: ErrorCode, message: string, fields?: string[]): ParseResult => ({ ok: false, code, message, ...(id === undefined ? {} : { id }), ...(fields ? { fields } : {}) });
  if (typeof raw.type !== 'string') return fail(ErrorCode.BAD_REQUEST, 'frame must have a string field "type"');
  const schema = Object.hasOwn(schemas, raw.type) ? schemas[raw.type as ClientFrameType] : undefined;
  if (!schema) return fail(ErrorCode.BAD_REQUEST, `unknown frame type '${raw.type.slice(0, 40)}'`);
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const fields = parsed.error.issues.map((i) => String(i.path[0] ?? ''));
    return fail(ErrorCode.BAD_REQUEST, issue ? describeIssue(raw.type, raw, issue) : `${raw.type}: invalid frame`, fields);
  }
  const frame: ClientFrame = parsed.data;
  if (frame.type === 'send') {
    const bodyError = checkBody(frame.body, limits.maxBodyChars);
    if (bodyError) return fail(bodyError.code, bodyError.message, ['body']);
  }
  if (frame.type === 'room.create') {
    const nameError = checkRoomName(frame.name);
    if (nameError) return fail(nameError.code, `room.create: ${nameError.message}`, ['name']);
    if (frame.members.length > MAX_IDS_PER_FRAME) return fail(ErrorCode.TOO_LARGE, `room.create: ${frame.members.length} members in one frame (limit ${MAX_IDS_PER_FRAME}); add the rest with room.add`, ['members']);
  }
  if ((frame.type === 'presence.watch' || frame.type === 'presence.unwatch') && frame.users.length > PRESENCE_USERS_PER_FRAME) {
    return fail(ErrorCode.TOO_LARGE, `${frame.type}: ${frame.users.length} users in one frame (limit ${PRESENCE_USERS_PER_FRAME}); split them over several frames`, ['users']);
  }
  return { ok: true, frame };
}

/** Checks a room name: null when acceptable, else the error to answer with. */
export function checkRoomName(name: string): Omit<ProtocolError, 'id'> | null {
  if (name.trim().length === 0) return { code: ErrorCode.BAD_REQUEST, message: 'name must not be empty' };
  if (codePointLength(name, ROOM_NAME_MAX_CHARS) > ROOM_NAME_MAX_CHARS) return { code: ErrorCode.TOO_LARGE, message: `name is longer than ${ROOM_NAME_MAX_CHARS} characters (the limit)` };
  return null;
}
