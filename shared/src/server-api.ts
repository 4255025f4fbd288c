/**
 * Server API (PROTOCOL.md "Server API"): the HTTP surface a product's own backend uses to post
 * messages and manage rooms. This file holds its wire schemas (they validate requests and are
 * turned into the OpenAPI document), the one parse function for its inputs, and the domain
 * interface the HTTP layer calls.
 */
import { z } from 'zod';
import { USER_ID_RE, USER_ID_RULE, checkBody, codePointLength } from './protocol';
import { MAX_IDS_PER_FRAME, ROOM_ID_RE, ROOM_NAME_MAX_CHARS, type RoomInfo, type RoomSummary } from './wire';

export type { RoomInfo, RoomSummary };

/** Largest request body, bytes (413 beyond). */
export const SERVER_API_BODY_LIMIT_BYTES = 64 * 1024;
/** Most user ids one request may name (`members` of a room creation). */
export const MAX_MEMBERS_PER_REQUEST = MAX_IDS_PER_FRAME;
export const REQUEST_ID_MAX_CHARS = 64;
/**
 * Room ids are assigned by the server (`r_<ULID>`); the API only refuses what cannot be one
 * (ROOM_ID_RE) and leaves "no such room" to the domain.
 */
export const ROOM_ID_RULE = '1-64 characters of A-Z a-z 0-9 _ . -, as returned when the room was created';

/** Error codes of the Server API's JSON errors, each with its HTTP status. */
export const SERVER_API_ERROR_STATUS = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  too_large: 413,
  rate_limited: 429,
  internal: 500,
  unavailable: 503,
} as const;
export type ServerApiErrorCode = keyof typeof SERVER_API_ERROR_STATUS;
const ERROR_CODES = Object.keys(SERVER_API_ERROR_STATUS) as [ServerApiErrorCode, ...ServerApiErrorCode[]];

// ---- domain interface ----------------------------------------------------------------------

export interface PostMessageRequest {
  id: string;
  from: string;
  to?: string;
  room?: string;
  body: string;
}

export interface PostMessageResult {
  msgId: string;
  ts: number;
  seq: number;
}

/**
 * What the Server API needs from the room and message domain. Failures are thrown as
 * DomainError (a protocol code and a message for the caller) or UnavailableError (outcome
 * unknown); anything else is answered 500 and logged.
 */
export interface ServerApiDomain {
  postMessage(req: PostMessageRequest): Promise<PostMessageResult>;
  createRoom(req: { name: string; owner: string; members: string[] }): Promise<RoomInfo>;
  getRoom(room: string): Promise<RoomInfo>;
  addMember(room: string, userId: string): Promise<RoomInfo>;
  removeMember(room: string, userId: string): Promise<RoomInfo>;
  listUserRooms(userId: string, after?: string): Promise<{ rooms: RoomSummary[]; more: boolean }>;
}

// ---- schemas ------------------------------------------------------------------------------

/** A string field whose type error says "is required" when absent (zod's default names the JS type). */
const str = () => z.string({ error: (issue) => (issue.input === undefined ? 'is required' : 'must be a string') });
const tooLarge = (ctx: z.core.$RefinementCtx<string>, message: string) => ctx.addIssue({ code: 'custom', message, params: { code: 'too_large' } });

const userId = () => str().regex(USER_ID_RE, `must be a user id (${USER_ID_RULE})`).meta({ description: `A user id: ${USER_ID_RULE}.`, examples: ['alice'] });
const roomId = () => str().regex(ROOM_ID_RE, `must be a room id (${ROOM_ID_RULE})`).meta({ description: `A room id: ${ROOM_ID_RULE}.`, examples: ['r_01JD6Q5Z3W4X8Y9ZABCDEFGHJK'] });

const roomName = () =>
  str()
    .superRefine((name, ctx) => {
      if (name.length === 0) ctx.addIssue({ code: 'custom', message: 'must not be empty' });
      else if (codePointLength(name, ROOM_NAME_MAX_CHARS) > ROOM_NAME_MAX_CHARS) tooLarge(ctx, `is longer than ${ROOM_NAME_MAX_CHARS} characters`);
    })
    // JSON Schema counts string length in code points, as the check above does.
    .meta({ minLength: 1, maxLength: ROOM_NAME_MAX_CHARS, description: `Room name, 1-${ROOM_NAME_MAX_CHARS} characters (code points); longer is too_large.`, examples: ['Team'] });

export interface ServerApiSchemaOptions {
  /** MAX_BODY_CHARS: longest message body in code points */
  maxBodyChars: number;
  /**
   * Called with each schema worth a name in the OpenAPI document (Error, Room, ...); what it
   * returns is used from then on, inside the other schemas too (the generator registers it).
   */
  named?: <S extends z.ZodType>(name: string, schema: S) => S;
}

/** Builds the Server API's schemas; the body limit is configuration, so they are built per instance. */
export function createServerApiSchemas(options: ServerApiSchemaOptions) {
  const { maxBodyChars } = options;
  const named = options.named ?? (<S extends z.ZodType>(_name: string, schema: S) => schema);
  const messageBody = str()
    .superRefine((body, ctx) => {
      const problem = checkBody(body, maxBodyChars);
      if (!problem) return;
      // checkBody speaks of "body ..."; the field name is put in front of every message here
      const message = problem.message.replace(/^body /, '');
      if (problem.code === 'too_large') tooLarge(ctx, message);
      else ctx.addIssue({ code: 'custom', message });
    })
    .meta({
      minLength: 1,
      maxLength: maxBodyChars,
      description: `Message text, 1-${maxBodyChars} characters (code points; longer is too_large); no control characters but tab, line feed and carriage return, no lone surrogates.`,
      examples: ['Your order has shipped.'],
    });

  const postMessageRequest = named(
    'PostMessageRequest',
    z
      .object(
        {
          id: str()
            .min(1, `must be 1-${REQUEST_ID_MAX_CHARS} characters`)
            .max(REQUEST_ID_MAX_CHARS, `must be 1-${REQUEST_ID_MAX_CHARS} characters`)
            .meta({ description: 'Idempotency key chosen by the caller, unique per `from`: a repeat answers the first msgId, ts and seq; a repeat with other content answers 409.', examples: ['order-1234-shipped'] }),
          from: userId().meta({ description: 'The user the message is sent as; need not be a room member.' }),
          to: userId().optional().meta({ description: 'Recipient user id; exactly one of `to` and `room`.' }),
          room: roomId().optional().meta({ description: 'Room id; exactly one of `to` and `room`.' }),
          body: messageBody,
        },
        { error: 'must be a JSON object' },
      )
      // Runs even when fields are wrong, so that one answer names every problem.
      .superRefine(
        (value, ctx) => {
          if (typeof value !== 'object' || value === null || Array.isArray(value)) return;
          const hasTo = (value as { to?: unknown }).to !== undefined;
          const hasRoom = (value as { room?: unknown }).room !== undefined;
          if (!hasTo && !hasRoom) ctx.addIssue({ code: 'custom', path: ['to'], message: 'one of to (a user id) or room (a room id) is required' });
          else if (hasTo && hasRoom) ctx.addIssue({ code: 'custom', path: ['room'], message: 'must not be given together with to' });
        },
        { when: () => true },
      )
      .meta({ oneOf: [{ required: ['to'] }, { required: ['room'] }] }),
  );

  const createRoomRequest = named(
    'CreateRoomRequest',
    z.object(
      {
        name: roomName(),
        owner: userId().meta({ description: 'The owner; also a member.' }),
        members: z
          .array(userId(), { error: (issue) => (issue.input === undefined ? 'is required' : 'must be an array of user ids') })
          .max(MAX_MEMBERS_PER_REQUEST, `has too many user ids: at most ${MAX_MEMBERS_PER_REQUEST} per request (add more with POST /rooms/{room}/members)`)
          .default([])
          .meta({ description: `Other members, at most ${MAX_MEMBERS_PER_REQUEST} per request (too_large beyond). Room limits (MAX_ROOM_MEMBERS, MAX_ROOMS_PER_USER) also apply.` }),
      },
      { error: 'must be a JSON object' },
    ),
  );

  const addMemberRequest = named('AddMemberRequest', z.object({ userId: userId() }, { error: 'must be a JSON object' }));

  const roomParams = z.object({ room: roomId() });
  const memberParams = z.object({ room: roomId(), userId: userId() });
  const userParams = z.object({ userId: userId() });
  const userRoomsQuery = z.object({ after: roomId().optional().meta({ description: 'Page after this room id (the last `room` of the previous page).' }) });

  const postMessageResult = named(
    'PostMessageResult',
    z.object({
      msgId: z.string().meta({ description: 'The server id of the message (time-ordered ULID).', examples: ['01JD6Q5Z3W4X8Y9ZABCDEFGHJK'] }),
      ts: z.number().int().meta({ description: 'Acceptance time, milliseconds since the epoch.', examples: [1732345678901] }),
      seq: z.number().int().positive().meta({ description: 'Position of the message in its conversation.', examples: [57] }),
    }),
  );
  const roomInfo = named(
    'Room',
    z.object({
      room: roomId(),
      name: z.string().meta({ examples: ['Team'] }),
      owner: userId(),
      members: z.array(userId()).meta({ description: 'Every member, the owner included.' }),
    }),
  );
  const roomSummary = named(
    'RoomSummary',
    z.object({
      room: roomId(),
      name: z.string().meta({ examples: ['Team'] }),
      owner: userId(),
      memberCount: z.number().int().nonnegative(),
    }),
  );
  const roomList = named(
    'RoomList',
    z.object({
      rooms: z.array(roomSummary).meta({ description: 'Ordered by room id, at most 200 per page.' }),
      more: z.boolean().meta({ description: 'true: ask again with after = the last room id of this page.' }),
    }),
  );
  const errorBody = named(
    'Error',
    z.object({
      error: z.object({
        code: z.enum(ERROR_CODES),
        message: z.string().meta({ description: 'What was wrong and what to do; a 400 names every invalid field.' }),
        retryAfterMs: z.number().int().nonnegative().optional().meta({ description: 'With rate_limited: milliseconds to wait before retrying (also in the Retry-After header, in seconds).' }),
      }),
    }),
  );

  return {
    postMessageRequest,
    createRoomRequest,
    addMemberRequest,
    roomParams,
    memberParams,
    userParams,
    userRoomsQuery,
    postMessageResult,
    roomInfo,
    roomSummary,
    roomList,
    errorBody,
  };
}

export type ServerApiSchemas = ReturnType<typeof createServerApiSchemas>;

export type ServerApiInputResult<T> = { ok: true; value: T } | { ok: false; code: 'bad_request' | 'too_large'; message: string; fields: string[] };

function isTooLarge(issue: z.core.$ZodIssue): boolean {
  if (issue.code === 'too_big') return issue.origin === 'array';
  return issue.code === 'custom' && (issue.params as { code?: unknown } | undefined)?.code === 'too_large';
}

/**
 * Parses one input of a Server API request (body, path parameters or query). A failure names
 * every invalid field ("from: must be a user id (...); body: must not be empty"); it is
 * too_large only when every problem is a size limit, bad_request otherwise.
 */
export function parseServerApiInput<T>(schema: z.ZodType<T>, value: unknown, what = 'request body'): ServerApiInputResult<T> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return { ok: true, value: parsed.data };
  const fields: string[] = [];
  const messages: string[] = [];
  for (const issue of parsed.error.issues) {
    const field = issue.path.length > 0 ? issue.path.map(String).join('.') : what;
    const message = `${field}: ${issue.message}`;
    if (messages.includes(message)) continue;
    messages.push(message);
    if (!fields.includes(field)) fields.push(field);
  }
  const code = parsed.error.issues.every(isTooLarge) ? 'too_large' : 'bad_request';
  return { ok: false, code, message: messages.join('; '), fields };
}
