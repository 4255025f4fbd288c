/**
 * Who is connected where, in Redis. All keys live under keyPrefix:
 *
 *   lease:{instanceId}        instance URL, PX leaseMs; the instance is alive while it exists
 *   inst:{instanceId}:users   SET of the userIds the instance claims
 *   user:{userId}             SET of the instanceIds claiming the user
 *   instances                 SET of every instanceId that may own keys (what the sweeper walks)
 *   hints:{instanceId}        SET of userIds the instance should send sync.hint to
 *   seen:{userId}             when the user's last claim went (ms since the epoch), for presence's lastSeen
 *
 * Every change that touches more than one key runs as one Lua script, so a
 * concurrent sweep, goodbye or re-assert never sees (or leaves) half of it.
 *
 * Whenever a script changes what a lookup would answer, it also PUBLISHes on
 * discoveryChangesChannel(keyPrefix) which users changed (at most
 * MAX_USERS_PER_CHANGE per message), or which instance every answer naming it
 * is stale for (goodbye, sweep, a new URL). Published by the same script, the
 * notification is atomic with the change: a lookup that runs after a gateway
 * received it sees the change. A lease that lapses by expiry is announced when
 * the sweeper removes the instance; until then forwards to it fail and the
 * gateway drops it on its own. Every heartbeat is also echoed on
 * discoveryBeatChannel(keyPrefix, instanceId), so a gateway can tell that the
 * notifications reach it (same Redis, same prefix, a live connection).
 * The scripts build `user:`/`lease:` key names themselves, which is fine on
 * one Redis (or a replicated primary) but not on Redis Cluster.
 * A claim is only removed by its own instance or once that instance's lease
 * is gone; and a missing lease makes the next heartbeat answer renewed=false,
 * so an instance whose claims were swept always learns to re-assert them.
 */
import { createHash } from 'node:crypto';
import { ClientClosedError, ClientOfflineError, ErrorReply } from 'redis';
import {
  UnavailableError,
  errorMessage,
  discoveryChangesChannel,
  discoveryBeatChannel,
  MAX_USERS_PER_CHANGE,
  CHANGE_USERS,
  CHANGE_INSTANCE,
  type InstanceRef,
  type Logger,
  type UserPresence,
} from '@simplechat/shared';
import type { RedisClient } from '@simplechat/shared';

export type RegistryRedis = Pick<RedisClient, 'evalSha' | 'eval' | 'sMembers' | 'mGet' | 'ping' | 'isReady'>;

export interface RegistryDeps {
  redis: RegistryRedis;
  /** shown in errors; without a password */
  redisUrl: string;
  keyPrefix: string;
  leaseMs: number;
  /** longest wait for one Redis reply before answering unavailable */
  commandTimeoutMs: number;
  log: Logger;
}

export interface HeartbeatResult {
  /** false: the lease had lapsed or Redis lost it; the instance must re-assert its claims */
  renewed: boolean;
  hints: string[];
}

export interface Registry {
  readonly leaseMs: number;
  heartbeat(instanceId: string, url: string): Promise<HeartbeatResult>;
  /** Drops the lease, every claim and the hints of the instance at once. */
  goodbye(instanceId: string): Promise<void>;
  /** Removals first, then additions: a user in both lists stays claimed (a stale claim costs a failed forward; a missing one loses live delivery). */
  updateClaims(instanceId: string, changes: { add: readonly string[]; remove: readonly string[] }): Promise<void>;
  replaceClaims(instanceId: string, users: readonly string[]): Promise<void>;
  /** Every requested user: online (claimed by an instance with a live lease) or when its last claim went, if known. */
  presence(users: readonly string[]): Promise<Map<string, UserPresence>>;
  /** Every requested user, mapped to the instances with a live lease that claim it (possibly none). */
  lookup(users: readonly string[]): Promise<Map<string, InstanceRef[]>>;
  addHints(instanceId: string, users: readonly string[]): Promise<void>;
  /** Removes the keys of every instance whose lease is gone; returns their ids. Safe to run from several processes at once. */
  sweep(): Promise<string[]>;
  /** true when Redis answers PING; never throws */
  isUp(): Promise<boolean>;
}

/** How long a user's lastSeen is kept after its last connection closed. */
const SEEN_TTL_MS = 90 * 24 * 3600 * 1000;

interface Script {
  source: string;
  sha1: string;
}

function script(source: string): Script {
  return { source, sha1: createHash('sha1').update(source).digest('hex') };
}

// Prepended to the scripts that change claims or leases: announce(channel, users) publishes
// the users whose lookup answer changed, in bounded messages (ids never contain a newline:
// they are [A-Za-z0-9_.-]).
const ANNOUNCE = `
local function announce(channel, users)
  for i = 1, #users, ${MAX_USERS_PER_CHANGE} do
    redis.call('PUBLISH', channel, '${CHANGE_USERS}\\n' .. table.concat(users, '\\n', i, math.min(i + ${MAX_USERS_PER_CHANGE - 1}, #users)))
  end
end
local function announce_instance(channel, id)
  redis.call('PUBLISH', channel, '${CHANGE_INSTANCE}\\n' .. id)
end
`;

// Prepended to the scripts that remove claims: unclaim(prefix, user, id) removes one claim and,
// when it was the user's last, records when (seen:{user}, kept SEEN_TTL_MS). Returns 1 when
// the claim was there.
const UNCLAIM = `
local function unclaim(prefix, user, id)
  local key = prefix .. 'user:' .. user
  if redis.call('SREM', key, id) == 0 then return 0 end
  if redis.call('SCARD', key) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', prefix .. 'seen:' .. user, string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)), 'PX', ${SEEN_TTL_MS})
  end
  return 1
end
`;

// KEYS: lease, instances, hints, inst users. ARGV: url, leaseMs, instanceId, channel, beat channel.
// A lease that comes back makes lookups return the instance again for the users it still
// claims; a new URL makes every cached answer naming the instance wrong.
const HEARTBEAT = script(`${ANNOUNCE}
local previous = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
redis.call('SADD', KEYS[2], ARGV[3])
local hints = redis.call('SMEMBERS', KEYS[3])
if #hints > 0 then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', ARGV[5], '')
if not previous then
  announce(ARGV[4], redis.call('SMEMBERS', KEYS[4]))
  return {0, hints}
end
if previous ~= ARGV[1] then announce_instance(ARGV[4], ARGV[3]) end
return {1, hints}
`);

// KEYS: inst users, instances. ARGV: prefix, instanceId, channel, number of removals, removals..., additions...
// Announces only the users whose set of instances actually changed.
const UPDATE_CLAIMS = script(`${ANNOUNCE}${UNCLAIM}
local prefix, id, channel, removals = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local changed = {}
for i = 5, 4 + removals do
  if unclaim(prefix, ARGV[i], id) == 1 then changed[#changed + 1] = ARGV[i] end
  redis.call('SREM', KEYS[1], ARGV[i])
end
for i = 5 + removals, #ARGV do
  if redis.call('SADD', prefix .. 'user:' .. ARGV[i], id) == 1 then changed[#changed + 1] = ARGV[i] end
  redis.call('SADD', KEYS[1], ARGV[i])
end
if #ARGV >= 5 + removals then redis.call('SADD', KEYS[2], id) end
announce(channel, changed)
return 0
`);

// KEYS: inst users, instances. ARGV: prefix, instanceId, channel, users...
const REPLACE_CLAIMS = script(`${ANNOUNCE}${UNCLAIM}
local prefix, id, channel = ARGV[1], ARGV[2], ARGV[3]
local wanted = {}
local changed = {}
for i = 4, #ARGV do wanted[ARGV[i]] = true end
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if wanted[user] then
    wanted[user] = nil
  else
    if unclaim(prefix, user, id) == 1 then changed[#changed + 1] = user end
    redis.call('SREM', KEYS[1], user)
  end
end
for user in pairs(wanted) do
  if redis.call('SADD', prefix .. 'user:' .. user, id) == 1 then changed[#changed + 1] = user end
  redis.call('SADD', KEYS[1], user)
end
redis.call('SADD', KEYS[2], id)
announce(channel, changed)
return 0
`);

// KEYS: lease, inst users, hints, instances. ARGV: prefix, instanceId, '1' to act only when the lease is gone (sweep), channel.
// Returns -1 when the lease was found alive, else the number of claims removed.
const DROP_INSTANCE = script(`${ANNOUNCE}${UNCLAIM}
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local users = redis.call('SMEMBERS', KEYS[2])
for _, user in ipairs(users) do unclaim(ARGV[1], user, ARGV[2]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[2])
if #users > 0 then announce_instance(ARGV[4], ARGV[2]) end
return #users
`);

// KEYS: hints. ARGV: ttlMs, users...
const ADD_HINTS = script(`
for i = 2, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
`);

// ARGV: prefix, users... Returns, per user in order, a flat list id1, url1, id2, url2, ...
// of the claiming instances whose lease is alive. One round trip for any batch size.
const LOOKUP = script(`
local prefix = ARGV[1]
local urls = {}
local out = {}
for i = 2, #ARGV do
  local refs = {}
  for _, id in ipairs(redis.call('SMEMBERS', prefix .. 'user:' .. ARGV[i])) do
    local url = urls[id]
    if url == nil then
      url = redis.call('GET', prefix .. 'lease:' .. id)
      urls[id] = url
    end
    if url then
      refs[#refs + 1] = id
      refs[#refs + 1] = url
    end
  end
  out[#out + 1] = refs
end
return out
`);

// ARGV: prefix, users... Returns, per user in order, {1} when an instance with a live lease
// claims it, else {0, lastSeen or ''}.
const PRESENCE = script(`
local prefix = ARGV[1]
local alive = {}
local out = {}
for i = 2, #ARGV do
  local online = 0
  for _, id in ipairs(redis.call('SMEMBERS', prefix .. 'user:' .. ARGV[i])) do
    if alive[id] == nil then alive[id] = redis.call('EXISTS', prefix .. 'lease:' .. id) == 1 end
    if alive[id] then
      online = 1
      break
    end
  end
  if online == 1 then out[#out + 1] = {1} else out[#out + 1] = {0, redis.call('GET', prefix .. 'seen:' .. ARGV[i]) or ''} end
end
return out
`);

/** Redis replies that mean "not now" rather than a bug in a script or a key of the wrong type. */
const TRANSIENT_REPLY = /^(LOADING|BUSY|MASTERDOWN|READONLY|TRYAGAIN|CLUSTERDOWN|NOREPLICAS|OOM)\b/;

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

/** No reply in time: the connection may look healthy while Redis is frozen or partitioned away. */
class RedisTimeoutError extends Error {
  constructor(ms: number) {
    super(`no reply within ${ms} ms`);
    this.name = 'RedisTimeoutError';
  }
}

/** A reply our own script could not have produced: a bug, answered 500, not 503. */
class UnexpectedReplyError extends Error {
  constructor(what: string, reply: unknown) {
    super(`unexpected Redis reply to ${what}: ${JSON.stringify(reply)?.slice(0, 200)}`);
    this.name = 'UnexpectedReplyError';
  }
}

function unexpectedReply(what: string, reply: unknown): Error {
  return new UnexpectedReplyError(what, reply);
}

export function createRegistry(deps: RegistryDeps): Registry {
  const { redis, keyPrefix: prefix, leaseMs, redisUrl, commandTimeoutMs } = deps;
  const log = deps.log;
  // Hints wait for the next heartbeat; a few lease periods covers a late one, and an instance
  // that never comes back does not leave them behind.
  const hintsTtlMs = leaseMs * 3;
  const channel = discoveryChangesChannel(prefix);
  const key = {
    lease: (id: string) => `${prefix}lease:${id}`,
    instUsers: (id: string) => `${prefix}inst:${id}:users`,
    hints: (id: string) => `${prefix}hints:${id}`,
    instances: `${prefix}instances`,
  };

  function toUnavailable(err: unknown): unknown {
    if (err instanceof UnexpectedReplyError) return err;
    if (err instanceof ErrorReply && !TRANSIENT_REPLY.test(err.message)) return err;
    const reason = err instanceof ClientOfflineError || err instanceof ClientClosedError ? 'not connected' : errorMessage(err);
    return new UnavailableError(`redis unavailable at ${redisUrl}: ${reason}`, { cause: err });
  }

  // node-redis's own command timeout only covers commands not yet written to the socket;
  // one already sent to a frozen Redis would wait for TCP to notice, so bound the wait here.
  // (The command itself stays queued in node-redis until Redis answers or the socket dies.)
  function withTimeout<T>(pending: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RedisTimeoutError(commandTimeoutMs)), commandTimeoutMs);
    });
    return Promise.race([pending, expired]).finally(() => clearTimeout(timer));
  }

  async function guarded<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw toUnavailable(err);
    }
  }

  async function run(s: Script, keys: string[], args: string[]): Promise<unknown> {
    try {
      return await withTimeout(redis.evalSha(s.sha1, { keys, arguments: args }));
    } catch (err) {
      // first use on this Redis, or Redis restarted and lost its script cache
      if (err instanceof ErrorReply && err.message.startsWith('NOSCRIPT')) return withTimeout(redis.eval(s.source, { keys, arguments: args }));
      throw err;
    }
  }

  async function dropInstance(instanceId: string, onlyIfLeaseGone: boolean): Promise<number> {
    const reply = await run(
      DROP_INSTANCE,
      [key.lease(instanceId), key.instUsers(instanceId), key.hints(instanceId), key.instances],
      [prefix, instanceId, onlyIfLeaseGone ? '1' : '0', channel],
    );
    if (typeof reply !== 'number') throw unexpectedReply('drop instance', reply);
    return reply;
  }

  return {
    leaseMs,

    heartbeat: (instanceId, url) =>
      guarded(async () => {
        const reply = await run(HEARTBEAT, [key.lease(instanceId), key.instances, key.hints(instanceId), key.instUsers(instanceId)], [url, String(leaseMs), instanceId, channel, discoveryBeatChannel(prefix, instanceId)]);
        if (!Array.isArray(reply) || typeof reply[0] !== 'number' || !isStringArray(reply[1])) throw unexpectedReply('heartbeat', reply);
        return { renewed: reply[0] === 1, hints: reply[1] };
      }),

    goodbye: (instanceId) =>
      guarded(async () => {
        await dropInstance(instanceId, false);
      }),

    updateClaims: (instanceId, { add, remove }) =>
      guarded(async () => {
        if (add.length === 0 && remove.length === 0) return;
        await run(UPDATE_CLAIMS, [key.instUsers(instanceId), key.instances], [prefix, instanceId, channel, String(remove.length), ...remove, ...add]);
      }),

    replaceClaims: (instanceId, users) =>
      guarded(async () => {
        await run(REPLACE_CLAIMS, [key.instUsers(instanceId), key.instances], [prefix, instanceId, channel, ...users]);
      }),

    lookup: (users) =>
      guarded(async () => {
        const found = new Map<string, InstanceRef[]>();
        if (users.length === 0) return found;
        const reply = await run(LOOKUP, [], [prefix, ...users]);
        if (!Array.isArray(reply) || reply.length !== users.length) throw unexpectedReply('lookup', reply);
        users.forEach((user, i) => {
          const flat: unknown = reply[i];
          if (!isStringArray(flat) || flat.length % 2 !== 0) throw unexpectedReply('lookup', flat);
          const refs: InstanceRef[] = [];
          for (let j = 0; j + 1 < flat.length; j += 2) {
            const [instanceId, url] = [flat[j], flat[j + 1]];
            if (instanceId !== undefined && url !== undefined) refs.push({ instanceId, url });
          }
          found.set(user, refs);
        });
        return found;
      }),

    presence: (users) =>
      guarded(async () => {
        const found = new Map<string, UserPresence>();
        if (users.length === 0) return found;
        const reply = await run(PRESENCE, [], [prefix, ...users]);
        if (!Array.isArray(reply) || reply.length !== users.length) throw unexpectedReply('presence', reply);
        users.forEach((user, i) => {
          const entry: unknown = reply[i];
          if (!Array.isArray(entry) || (entry[0] !== 0 && entry[0] !== 1)) throw unexpectedReply('presence', entry);
          const seen = Number(entry[1]);
          found.set(user, entry[0] === 1 ? { online: true } : entry[1] ? { online: false, lastSeen: seen } : { online: false });
        });
        return found;
      }),

    addHints: (instanceId, users) =>
      guarded(async () => {
        if (users.length === 0) return;
        await run(ADD_HINTS, [key.hints(instanceId)], [String(hintsTtlMs), ...users]);
      }),

    sweep: () =>
      guarded(async () => {
        const ids = await withTimeout(redis.sMembers(key.instances));
        if (ids.length === 0) return [];
        const leases = await withTimeout(redis.mGet(ids.map(key.lease)));
        const lapsed = ids.filter((_, i) => leases[i] === null);
        // The script checks the lease again: it may have been renewed since the MGET,
        // and another SvDiscover may be sweeping the same instance right now.
        const removed = await Promise.all(lapsed.map((id) => dropInstance(id, true)));
        const swept: string[] = [];
        for (const [i, id] of lapsed.entries()) {
          const claims = removed[i] ?? -1;
          if (claims < 0) continue;
          swept.push(id);
          // 0 claims: already swept by another SvDiscover, or an instance that held none
          if (claims > 0) log.warn({ instanceId: id, claims }, 'instance lease lapsed without goodbye; removed its claims');
          else log.debug({ instanceId: id }, 'swept an instance whose lease lapsed');
        }
        return swept;
      }),

    async isUp() {
      if (!redis.isReady) return false;
      try {
        await withTimeout(redis.ping());
        return true;
      } catch {
        return false;
      }
    },
  };
}
