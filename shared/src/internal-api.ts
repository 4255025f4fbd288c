/**
 * Contracts of the cluster-internal HTTP API (all under /internal/, bearer
 * INTERNAL_TOKEN). Both sides parse with these schemas.
 */
import { z } from 'zod';
import { USER_ID_RE, CURSOR_RE } from './protocol';

const userId = z.string().regex(USER_ID_RE);
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
/** POST /internal/hints: a delivery to these users on that instance failed; it should send sync.hint. */
export const hintsRequest = z.object({ instanceId, users });

export type InstanceRef = z.infer<typeof instanceRef>;
export type HeartbeatResponse = z.infer<typeof heartbeatResponse>;
export type LookupResponse = z.infer<typeof lookupResponse>;

// ---- SvPersist -------------------------------------------------------------

export const wireMessage = z.object({ msgId: z.string(), from: z.string(), to: z.string(), body: z.string(), ts: z.number() });
/** GET /internal/history?user=&with=&before=&limit= */
export const historyQuery = z.object({ user: userId, with: userId, before: z.string().min(1).max(64).optional(), limit: z.coerce.number().int().min(1).max(200).default(50) });
export const historyResponse = z.object({ messages: z.array(wireMessage), more: z.boolean() });
/** GET /internal/sync?user=&after=&limit= */
export const syncQuery = z.object({ user: userId, after: z.string().regex(CURSOR_RE).optional(), limit: z.coerce.number().int().min(1).max(500).default(200) });
export const syncResponse = z.object({ messages: z.array(wireMessage), cursor: z.string(), more: z.boolean() });
/** GET /internal/cursor: the position just past everything committed so far. */
export const cursorResponse = z.object({ cursor: z.string(), /** ms timestamp of the newest stored message, null when none */ newestTs: z.number().nullable().optional() });
/** GET /internal/messages/by-client?sender=&clientId=: the stored message of an idempotency key, if any. */
export const byClientQuery = z.object({ sender: userId, clientId: z.string().min(1).max(64) });
export const byClientResponse = z.object({ message: wireMessage.nullable() });

// ---- SvWebsocket peer forwarding --------------------------------------------

/** POST /internal/deliver: frames for users connected to the receiving instance. */
export const deliverRequest = z.object({
  items: z.array(z.object({ users: z.array(userId).min(1).max(1000), frame: z.string().min(2).max(1_000_000) })).max(100_000),
});
export const deliverResponse = z.object({ delivered: z.number() });
