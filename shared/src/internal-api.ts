/**
 * Contracts of the cluster-internal API (all under /internal/, bearer
 * INTERNAL_TOKEN): HTTP routes and the peer link between SvWebsocket
 * instances. Both sides parse with these schemas.
 */
import { z } from 'zod';
import { keyBucket } from './redis';
import { USER_ID_RE, MSG_ID_REF_RE, ROOM_ID_RE, PRESENCE_USERS_PER_CONNECTION, isCursor } from './protocol';

const userId = z.string().regex(USER_ID_RE);
/** Room ids as storage hands them out (`r_` + ULID); any id of these characters (no ':') is looked up. */
const roomId = z.string().regex(ROOM_ID_RE);
export const instanceId = z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/);
const url = z.string().url().max(2048);
/** Claims and lookups are batched; one request carries at most this many users. */
export const MAX_USERS_PER_CALL = 10_000;
const users = z.array(userId).max(MAX_USERS_PER_CALL);

// ---- SvDiscover ------------------------------------------------------------

/** PUT /internal/instances/:instanceId: heartbeat (lease renewal). */
export const heartbeatRequest = z.object({ url });
/** renewed=false: the lease had lapsed (or Redis lost it); the instance must re-assert its claims. */
export const heartbeatResponse = z.object({ leaseMs: z.number(), renewed: z.boolean(), hints: z.array(userId) });

/** POST /internal/claims: add/remove this instance's claims on users. */
export const claimsRequest = z.object({ instanceId, url, add: users.default([]), remove: users.default([]) });
/** PUT /internal/instances/:instanceId/claims: replace the whole claim set (re-assert). */
export const replaceClaimsRequest = z.object({ url, users });
/** POST /internal/lookup: where are these users connected? */
export const lookupRequest = z.object({ users });
export const instanceRef = z.object({ instanceId, url });
export const lookupResponse = z.object({ users: z.record(z.string(), z.array(instanceRef)) });
/** POST /internal/presence (same request as lookup): online, or when the user's last connection went. */
export const userPresence = z.union([z.object({ online: z.literal(true) }), z.object({ online: z.literal(false), lastSeen: z.number().int().nonnegative().optional() })]);
export const presenceResponse = z.object({ users: z.record(z.string(), userPresence) });
/** POST /internal/hints: a delivery to these users on that instance failed; it should send sync.hint. */
export const hintsRequest = z.object({ instanceId, users });

export type InstanceRef = z.infer<typeof instanceRef>;
export type HeartbeatResponse = z.infer<typeof heartbeatResponse>;
export type LookupResponse = z.infer<typeof lookupResponse>;
export type UserPresence = z.infer<typeof userPresence>;
export type PresenceResponse = z.infer<typeof presenceResponse>;

// ---- SvDiscover change notifications (Redis pub/sub) -------------------------

/**
 * The channel on which SvDiscover announces, from the same Lua script as the
 * change, that lookup answers changed. Gateways drop their cached answers on it.
 */
export function discoveryChangesChannel(keyPrefix: string): string {
  return `${keyPrefix}discovery:changed`;
}
/**
 * The channel on which each heartbeat of an instance is echoed (empty payload):
 * that instance knows its notifications arrive while its heartbeats echo back.
 */
export function discoveryBeatChannel(keyPrefix: string, instanceId: string): string {
  return `${keyPrefix}discovery:beat:${instanceId}`;
}
/** Users named in one notification at most; larger changes are announced in several. */
export const MAX_USERS_PER_CHANGE = 1000;
/** First line of a notification: the ids on the following lines are users... */
export const CHANGE_USERS = 'users';
/** ...or the one id on the next line is an instance whose every claim and lease is gone or moved. */
export const CHANGE_INSTANCE = 'instance';
/** ...or the next two lines are a room and its membership version: gateways drop what they know of it. */
export const CHANGE_ROOM = 'room';

/** Users' registry keys are spread over this many hash tags on a Redis Cluster (one node: one). */
export const DISCOVERY_USER_BUCKETS = 128;

/**
 * SvDiscover's Redis keys (registry.ts; gateways read the instances set and the leases too).
 * `tag` is the connection's (Redis.tag): on a cluster, an instance's keys share its slot and a
 * user's keys their bucket's; on one node the names carry no tag.
 */
export function discoveryKeys(keyPrefix: string, tag: (group: string) => string) {
  const of = (id: string) => `${tag(id)}${id}`;
  const ofUser = (user: string) => `${tag(`u${keyBucket(user, DISCOVERY_USER_BUCKETS)}`)}${user}`;
  return {
    /** SET of every instanceId that may own keys (what the sweeper walks) */
    instances: `${keyPrefix}instances`,
    /** the instance's URL, PX leaseMs; the instance is alive while it exists */
    lease: (id: string) => `${keyPrefix}lease:${of(id)}`,
    /** SET of the userIds the instance claims */
    instUsers: (id: string) => `${keyPrefix}inst:${of(id)}:users`,
    /** SET of userIds the instance should send sync.hint to */
    hints: (id: string) => `${keyPrefix}hints:${of(id)}`,
    /** the replication id of the master that held the instance's keys at its last heartbeat */
    instReplid: (id: string) => `${keyPrefix}inst-replid:${of(id)}`,
    /** set when keys of the instance's users may have been lost: its next heartbeat answers renewed=false */
    reassert: (id: string) => `${keyPrefix}reassert:${of(id)}`,
    /** SET of the instanceIds claiming the user */
    user: (user: string) => `${keyPrefix}user:${ofUser(user)}`,
    /** when the user's last claim went (ms since the epoch), for presence's lastSeen */
    seen: (user: string) => `${keyPrefix}seen:${ofUser(user)}`,
    /** per users' bucket: the replication id of the master that held it at the last check */
    usersReplid: (bucket: number) => `${keyPrefix}users-replid:${tag(`u${bucket}`)}`,
  };
}

export type DiscoveryKeys = ReturnType<typeof discoveryKeys>;

/** users: these users' instance sets changed; instance: every answer naming this instance is stale. */
export type DiscoveryChange = { kind: 'users'; users: string[] } | { kind: 'instance'; instanceId: string } | { kind: 'room'; room: string; version: number };

/** Parses a notification ("users\nalice\nbob" or "instance\nws-1"); undefined when it is neither. */
export function parseDiscoveryChange(payload: string): DiscoveryChange | undefined {
  const lines = payload.split('\n');
  const [kind, ...ids] = lines;
  if (kind === CHANGE_USERS) {
    if (ids.length === 0 || ids.length > MAX_USERS_PER_CHANGE || !ids.every((u) => USER_ID_RE.test(u))) return undefined;
    return { kind: 'users', users: ids };
  }
  if (kind === CHANGE_ROOM) {
    const [room, version] = ids;
    if (ids.length !== 2 || room === undefined || !ROOM_ID_RE.test(room) || !/^\d{1,15}$/.test(version ?? '')) return undefined;
    return { kind: 'room', room, version: Number(version) };
  }
  if (kind === CHANGE_INSTANCE) {
    const [id] = ids;
    if (ids.length !== 1 || id === undefined || !instanceId.safeParse(id).success) return undefined;
    return { kind: 'instance', instanceId: id };
  }
  return undefined;
}

// ---- SvPersist -------------------------------------------------------------

export const wireMessage = z.object({ msgId: z.string(), from: z.string(), to: z.string().optional(), room: z.string().optional(), body: z.string(), ts: z.number(), seq: z.number().int().positive() });
/** POST /internal/positions: hands out the next `count` positions of each conversation (each named once); `upTo[i]` is the last of block i. */
export const positionsRequest = z.object({ blocks: z.array(z.object({ conversation: z.string().min(1).max(160), count: z.number().int().min(1).max(1_000_000) })).min(1).max(10_000) });
export const positionsResponse = z.object({ upTo: z.array(z.number().int().positive()) });
/** POST /internal/shared: which of `others` share a conversation with `user` (presence's PRESENCE_WATCH=shared). */
export const sharedWithRequest = z.object({ user: userId, others: z.array(userId).min(1).max(PRESENCE_USERS_PER_CONNECTION) });
export const sharedWithResponse = z.object({ shared: z.array(z.string()) });
/** GET /internal/history?user=&with=&before=&limit= (a direct conversation) or ?user=&room=&before=&limit= (a room): exactly one of with and room. */
export const historyQuery = z
  .object({ user: userId, with: userId.optional(), room: roomId.optional(), before: z.string().regex(MSG_ID_REF_RE).optional(), limit: z.coerce.number().int().min(1).max(200).default(50) })
  .refine((q) => (q.with === undefined) !== (q.room === undefined), { message: 'give exactly one of with and room' });
/** The answer for `with`. */
/** Empty positions among a history page's. */
const emptySeqs = z.array(z.number().int().positive()).optional();
/** Positions that became empty in a sync page's storage range, by conversation. */
const emptyByConversation = z.array(z.union([z.object({ with: z.string(), seqs: z.array(z.number().int().positive()) }), z.object({ room: z.string(), seqs: z.array(z.number().int().positive()) })])).optional();
export const historyResponse = z.object({ messages: z.array(wireMessage), more: z.boolean(), empty: emptySeqs });
/** GET /internal/sync?user=&after=&limit= */
export const syncQuery = z.object({ user: userId, after: z.string().refine(isCursor, 'not a cursor this server handed out').optional(), limit: z.coerce.number().int().min(1).max(500).default(200) });
export const syncResponse = z.object({ messages: z.array(wireMessage), cursor: z.string(), more: z.boolean(), empty: emptyByConversation });
/** GET /internal/cursor: the position just past everything committed so far. */
export const cursorResponse = z.object({ cursor: z.string(), /** ms timestamp of the newest stored message, null when none */ newestTs: z.number().nullable().optional() });
/** GET /internal/messages/by-client?sender=&clientId=: the stored message of an idempotency key, if any. */
export const byClientQuery = z.object({ sender: userId, clientId: z.string().min(1).max(64) });
export const byClientResponse = z.object({ message: wireMessage.nullable() });
/** GET /internal/conversations: the user's conversation list (PROTOCOL.md "Receipts and conversations"). */
export const conversationsQuery = z.object({ user: userId, before: z.coerce.number().int().positive().optional() });
const position = z.number().int().nonnegative();
const conversationSummary = z.union([z.object({ with: userId }), z.object({ room: roomId })]).and(
  z.object({ last: wireMessage, unread: position, readUpTo: position, deliveredUpTo: position, peerReadUpTo: position.optional(), peerDeliveredUpTo: position.optional(), muted: z.boolean() }),
);
export const conversationsResponse = z.object({ conversations: z.array(conversationSummary), more: z.boolean() });
/** GET /internal/rooms/:room/marks: each current member's stored marks, starting where it last joined (no room: empty). */
export const roomMarksResponse = z.object({ delivered: z.record(userId, position), read: z.record(userId, position) });
/** POST /internal/mutes: the user's conversation muted until `until` (0: unmuted). */
export const muteRequest = z.object({ user: userId, conversation: z.string().min(1).max(160), until: z.number().int().nonnegative() });
/** GET /internal/positions/:conversation: how far its positions were handed out (0: never). */
export const reservedParams = z.object({ conversation: z.string().min(1).max(160) });
export const reservedResponse = z.object({ reserved: position });

// ---- SvPersist: rooms ----------------------------------------------------------
// Refusals (no such room, not the owner, a limit) are answered 200 with `ok: false`:
// a non-2xx answer means storage could not say. 400 only for a malformed request.

/** A room's position as the gateway knows it; null: storage uses the highest it handed out. */
const roomPosition = z.number().int().nonnegative().nullable();
export const roomRefusal = z.object({ ok: z.literal(false), code: z.enum(['not_found', 'forbidden', 'too_large', 'bad_request']), message: z.string() });
export const roomInfo = z.object({ room: z.string(), name: z.string(), owner: z.string().nullable(), members: z.array(z.string()), version: z.number().int().positive() });
/** The answer to every change: `changed` false when it changed nothing; `position` the one it took effect at. */
export const roomChangeResponse = z.discriminatedUnion('ok', [
  z.object({ ok: z.literal(true), changed: z.boolean(), info: roomInfo, newOwner: z.string().optional(), ended: z.boolean().optional(), position: z.number().int().nonnegative() }),
  roomRefusal,
]);
/** POST /internal/rooms: name is checked by storage (1-100 code points: bad_request, too_large), like the limits. */
export const createRoomRequest = z.object({ name: z.string().max(10_000), owner: userId, members: users, position: roomPosition.optional() });
/** POST /internal/rooms/:room/members and /internal/rooms/:room/remove; `by` null: the server API (no owner check). */
export const roomMemberRequest = z.object({ userId, by: userId.nullable(), position: roomPosition });
/** POST /internal/rooms/:room/leave */
export const leaveRoomRequest = z.object({ userId, position: roomPosition });
export const roomParams = z.object({ room: roomId });
/** GET /internal/rooms/:room: an ended room answers with `ended: true`. */
export const roomGetResponse = z.discriminatedUnion('ok', [roomInfo.extend({ ok: z.literal(true), ended: z.boolean() }), roomRefusal]);
/** GET /internal/users/:userId/rooms?after=&limit=: current rooms ordered by id. */
export const userRoomsParams = z.object({ userId });
export const userRoomsQuery = z.object({ after: roomId.optional(), limit: z.coerce.number().int().min(1).max(200).default(200) });
export const userRoomsResponse = z.object({
  rooms: z.array(z.object({ room: z.string(), name: z.string(), owner: z.string().nullable(), memberCount: z.number().int().nonnegative() })),
  more: z.boolean(),
});
/** The answer of GET /internal/history for `room`. */
export const roomHistoryResponse = z.discriminatedUnion('ok', [
  z.object({ ok: z.literal(true), messages: z.array(wireMessage), more: z.boolean(), empty: emptySeqs }),
  z.object({ ok: z.literal(false), code: z.enum(['not_found', 'forbidden']), message: z.string() }),
]);

export type RoomRefusalResponse = z.infer<typeof roomRefusal>;
export type RoomChangeResponse = z.infer<typeof roomChangeResponse>;
export type RoomGetResponse = z.infer<typeof roomGetResponse>;
export type UserRoomsResponse = z.infer<typeof userRoomsResponse>;
export type RoomHistoryResponse = z.infer<typeof roomHistoryResponse>;

// ---- SvWebsocket peer forwarding --------------------------------------------

/** POST /internal/deliver: frames for users connected to the receiving instance. */
export const deliverRequest = z.object({
  items: z.array(z.object({ users: z.array(userId).min(1).max(1000), frame: z.string().min(2).max(1_000_000) })).max(100_000),
});
export const deliverResponse = z.object({ delivered: z.number() });

/**
 * The peer link: one WebSocket per sending instance at this path (upgrade with
 * the bearer INTERNAL_TOKEN). Each text message carries the same items as a
 * POST /internal/deliver, numbered per connection with an increasing seq.
 */
export const PEER_LINK_PATH = '/internal/link';
export const peerLinkBatch = deliverRequest.extend({ seq: z.number().int().positive() });
/** The receiver's answer: every batch up to and including seq `ack` was delivered (cumulative). */
export const peerLinkAck = z.object({ ack: z.number().int().nonnegative() });
