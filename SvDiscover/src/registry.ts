/**
 * Who is connected where, in Redis. The keys (discoveryKeys in the shared
 * package) live under keyPrefix:
 *
 *   lease:{instanceId}        instance URL, PX leaseMs; the instance is alive while it exists
 *   inst:{instanceId}:users   SET of the userIds the instance claims
 *   user:{userId}             SET of the instanceIds claiming the user
 *   instances                 SET of every instanceId that may own keys (what the sweeper walks)
 *   hints:{instanceId}        SET of userIds the instance should send sync.hint to
 *   seen:{userId}             when the user's last claim went (ms since the epoch), for presence's lastSeen
 *
 * On a Redis Cluster an instance's keys share its slot and a user's keys their
 * bucket's (a hash tag in the name); on one node the names carry no tag. Every
 * script receives its keys in KEYS and touches one slot, so a change that
 * spans an instance and its users is one script per slot, issued together (one
 * round trip on one node): the instance's own set first in the sweep, its
 * users' sets in parallel elsewhere. What a half-done change can leave is
 * repaired by a re-assert (renewed=false on the next heartbeat, which replaces
 * the claim set and adds every claim again): a claim update that failed, a
 * sweep racing a late heartbeat (the sweep then asks for one more re-assert),
 * or a failover that lost a master's latest writes (another replication id
 * under the instance's keys at its heartbeat, or under a users' bucket at a
 * sweep, which then asks every instance to re-assert).
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
  discoveryKeys,
  bySlot,
  LUA_REPLID,
  MAX_USERS_PER_CHANGE,
  CHANGE_USERS,
  CHANGE_INSTANCE,
  DISCOVERY_USER_BUCKETS,
  type InstanceRef,
  type Logger,
  type Redis,
  type UserPresence,
} from '@simplechat/shared';

export type RegistryRedis = Pick<Redis, 'evalSha' | 'eval' | 'sMembers' | 'ping' | 'isReady' | 'tag' | 'slotOf'>;

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
  /** Drops the lease, every claim and the hints of the instance. */
  goodbye(instanceId: string): Promise<void>;
  /** Removals first, then additions: a user in both lists stays claimed (a stale claim costs a failed forward; a missing one loses live delivery). */
  updateClaims(instanceId: string, changes: { add: readonly string[]; remove: readonly string[] }): Promise<void>;
  replaceClaims(instanceId: string, users: readonly string[]): Promise<void>;
  /** Every requested user: online (claimed by an instance with a live lease) or when its last claim went, if known. */
  presence(users: readonly string[]): Promise<Map<string, UserPresence>>;
  /** Every requested user, mapped to the instances with a live lease that claim it (possibly none). */
  lookup(users: readonly string[]): Promise<Map<string, InstanceRef[]>>;
  addHints(instanceId: string, users: readonly string[]): Promise<void>;
  /**
   * Removes the keys of every instance whose lease is gone; returns their ids. Also asks every
   * instance to re-assert its claims when a users' bucket moved to another master. Safe to run
   * from several processes at once.
   */
  sweep(): Promise<string[]>;
  /** true when Redis answers PING; never throws */
  isUp(): Promise<boolean>;
}

/** How long a user's lastSeen is kept after its last connection closed. */
const SEEN_TTL_MS = 90 * 24 * 3600 * 1000;
/** Instances whose leases are passed to lookups in the users' own script (where they share a slot: always on one node). */
const MAX_KNOWN_INSTANCES = 100;

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

// KEYS: lease, hints, inst users, inst replid, reassert flag. ARGV: url, leaseMs, instanceId,
// channel, beat channel. Returns {renewed (1/0), hints}.
// A lease that comes back makes lookups return the instance again for the users it still
// claims; a new URL makes every cached answer naming the instance wrong. The instance must
// re-assert when its lease was gone, when its keys are on another master than at its last
// heartbeat (a failover may have lost that master's latest writes), or when asked to.
const HEARTBEAT = script(`${ANNOUNCE}${LUA_REPLID}
local rid = replid()
local lastRid = redis.call('GET', KEYS[4])
if lastRid ~= rid then redis.call('SET', KEYS[4], rid) end
local asked = redis.call('DEL', KEYS[5]) == 1
local previous = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
local hints = redis.call('SMEMBERS', KEYS[2])
if #hints > 0 then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[5], '')
if not previous then
  announce(ARGV[4], redis.call('SMEMBERS', KEYS[3]))
  return {0, hints}
end
if previous ~= ARGV[1] then announce_instance(ARGV[4], ARGV[3]) end
if asked or (lastRid and lastRid ~= rid) then return {0, hints} end
return {1, hints}
`);

// KEYS: the instances set. ARGV: instanceId.
const ADD_INSTANCE = script(`return redis.call('SADD', KEYS[1], ARGV[1])`);
// KEYS: the instances set. ARGV: instanceId.
const REMOVE_INSTANCE = script(`return redis.call('SREM', KEYS[1], ARGV[1])`);

// KEYS: inst users. ARGV: number of removals, removals..., additions...
const INSTANCE_CLAIMS = script(`
local removals = tonumber(ARGV[1])
for i = 2, 1 + removals do redis.call('SREM', KEYS[1], ARGV[i]) end
for i = 2 + removals, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
return 0
`);

// KEYS: inst users. ARGV: the users wanted. Makes the set exactly those; returns the users it dropped.
const REPLACE_INSTANCE_CLAIMS = script(`
local wanted = {}
for i = 1, #ARGV do wanted[ARGV[i]] = true end
local dropped = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not wanted[user] then
    dropped[#dropped + 1] = user
    redis.call('SREM', KEYS[1], user)
  end
end
for i = 1, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
return dropped
`);

// KEYS: per user in order, its instances set and its seen key. ARGV: instanceId, channel, seen
// ttl ms, then per user '+' (claim) or '-' (drop the claim) and the user. A claim dropped as the
// user's last records when (seen). Announces the users whose set of instances changed, unless
// the channel is ''.
const USER_CLAIMS = script(`${ANNOUNCE}
local id, channel = ARGV[1], ARGV[2]
local changed = {}
local now = nil
for i = 1, #KEYS / 2 do
  local set, seen, op, user = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i + 2], ARGV[2 * i + 3]
  if op == '+' then
    if redis.call('SADD', set, id) == 1 then changed[#changed + 1] = user end
  elseif redis.call('SREM', set, id) == 1 then
    changed[#changed + 1] = user
    if redis.call('SCARD', set) == 0 then
      if not now then
        local t = redis.call('TIME')
        now = string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000))
      end
      redis.call('SET', seen, now, 'PX', ARGV[3])
    end
  end
end
if channel ~= '' then announce(channel, changed) end
return #changed
`);

// KEYS: lease, inst users. ARGV: '1' for a sweep (only when the lease is gone), else '0'.
// Returns -1 when the lease was found alive, else the users the instance claims.
const DROP_BEGIN = script(`
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
return redis.call('SMEMBERS', KEYS[2])
`);

// KEYS: lease, inst users, hints, inst replid, reassert flag. ARGV: '1' for a sweep, instanceId,
// channel, then the users whose claims were dropped. Removes them from the instance's set (a
// claim added meanwhile stays, for the next sweep) and, once it is empty, the instance's keys.
// Returns the claims left (-1: the lease came back meanwhile, and the instance re-asserted or is
// about to, maybe before the sweep removed the claims: it is asked to re-assert once more).
const DROP_END = script(`
local sweep = ARGV[1] == '1'
if sweep and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[5], '1')
  return -1
end
for i = 4, #ARGV do redis.call('SREM', KEYS[2], ARGV[i]) end
local left = redis.call('SCARD', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[3])
if left == 0 then redis.call('DEL', KEYS[2], KEYS[4], KEYS[5]) end
if #ARGV > 3 then redis.call('PUBLISH', ARGV[3], '${CHANGE_INSTANCE}\\n' .. ARGV[2]) end
return left
`);

// KEYS: hints. ARGV: ttlMs, users...
const ADD_HINTS = script(`
for i = 2, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
`);

// KEYS: leases. Returns each one's URL, or '' when it is gone.
const LEASES = script(`
local out = {}
for i = 1, #KEYS do out[i] = redis.call('GET', KEYS[i]) or '' end
return out
`);

// KEYS: n users' instances sets, then m leases. ARGV: n, then the m leases' instanceIds.
// Returns, per user in order, a flat list id1, url1, id2, url2, ... of the claiming instances:
// those whose lease is among KEYS only when it is alive; the others with url '' (the caller
// reads their leases).
const LOOKUP = script(`
local n = tonumber(ARGV[1])
local leaseOf = {}
for i = 2, #ARGV do leaseOf[ARGV[i]] = KEYS[n + i - 1] end
local urls = {}
local out = {}
for i = 1, n do
  local refs = {}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    local url = urls[id]
    if url == nil then
      if leaseOf[id] then url = redis.call('GET', leaseOf[id]) or false else url = '' end
      urls[id] = url
    end
    if url then
      refs[#refs + 1] = id
      refs[#refs + 1] = url
    end
  end
  out[i] = refs
end
return out
`);

// KEYS: n users' instances sets, their n seen keys, then m leases. ARGV: n, then the m leases'
// instanceIds. Returns per user in order {1} when an instance with a live lease among KEYS claims
// it, else {0, lastSeen or '', the claiming instances whose lease is not among KEYS...}.
const PRESENCE = script(`
local n = tonumber(ARGV[1])
local leaseOf = {}
for i = 2, #ARGV do leaseOf[ARGV[i]] = KEYS[2 * n + i - 1] end
local alive = {}
local out = {}
for i = 1, n do
  local online = 0
  local unknown = {}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    if leaseOf[id] then
      if alive[id] == nil then alive[id] = redis.call('EXISTS', leaseOf[id]) == 1 end
      if alive[id] then
        online = 1
        break
      end
    else
      unknown[#unknown + 1] = id
    end
  end
  if online == 1 then
    out[i] = {1}
  else
    local entry = {0, redis.call('GET', KEYS[n + i]) or ''}
    for _, id in ipairs(unknown) do entry[#entry + 1] = id end
    out[i] = entry
  end
end
return out
`);

// KEYS: users' buckets' replid keys. Records the replication id of the master running it in each;
// returns the positions (1-based) of those that held another one (that bucket moved to another
// master: a failover may have lost its latest writes).
const USERS_REPLID = script(`${LUA_REPLID}
local rid = replid()
local moved = {}
for i = 1, #KEYS do
  local last = redis.call('GET', KEYS[i])
  if last ~= rid then
    redis.call('SET', KEYS[i], rid)
    if last then moved[#moved + 1] = i end
  end
end
return moved
`);

// KEYS: reassert flags. ARGV: ttl ms.
const ASK_REASSERT = script(`
for i = 1, #KEYS do redis.call('SET', KEYS[i], '1', 'PX', ARGV[1]) end
return 0
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
  const key = discoveryKeys(prefix, (group) => redis.tag(group));
  /** Instances seen lately (the sweeper's list, and lookups'): their leases go along in lookups where they share the users' slot. */
  let knownInstances = new Set<string>();

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

  /** Claims (op '+') and drops ('-') on the users' own sets, one script per slot, all at once. */
  async function userClaims(instanceId: string, ops: readonly (readonly ['+' | '-', string])[], announce = true): Promise<void> {
    await Promise.all(
      bySlot(redis, ops, ([, user]) => key.user(user)).map((group) =>
        run(
          USER_CLAIMS,
          group.flatMap(([, user]) => [key.user(user), key.seen(user)]),
          [instanceId, announce ? channel : '', String(SEEN_TTL_MS), ...group.flatMap(([op, user]) => [op, user])],
        ),
      ),
    );
  }

  /** url ('' when gone) of each instance's lease, read one slot at a time. */
  async function leasesOf(ids: readonly string[]): Promise<Map<string, string>> {
    const urls = new Map<string, string>();
    await Promise.all(
      bySlot(redis, ids, key.lease).map(async (group) => {
        const reply = await run(LEASES, group.map(key.lease), []);
        if (!isStringArray(reply) || reply.length !== group.length) throw unexpectedReply('leases', reply);
        group.forEach((id, i) => urls.set(id, reply[i] as string));
      }),
    );
    return urls;
  }

  /** Per slot of the users: its users, and the known instances whose leases share that slot. */
  function lookupGroups(users: readonly string[]): { users: string[]; leases: string[] }[] {
    const groups = bySlot(redis, users, key.user);
    const leasesBySlot = new Map<number, string[]>();
    for (const id of knownInstances) {
      const slot = redis.slotOf(key.lease(id));
      const list = leasesBySlot.get(slot);
      if (list) list.push(id);
      else leasesBySlot.set(slot, [id]);
    }
    return groups.map((group) => ({ users: group, leases: leasesBySlot.get(redis.slotOf(key.user(group[0] as string))) ?? [] }));
  }

  function learn(ids: Iterable<string>): void {
    for (const id of ids) if (knownInstances.size < MAX_KNOWN_INSTANCES) knownInstances.add(id);
  }

  /** Removes the instance's claims and keys; -1 when its lease is alive (a sweep), else how many claims it had. */
  async function dropInstance(instanceId: string, isSweep: boolean): Promise<number> {
    const flag = isSweep ? '1' : '0';
    const begun = await run(DROP_BEGIN, [key.lease(instanceId), key.instUsers(instanceId)], [flag]);
    if (begun === -1) return -1;
    if (!isStringArray(begun)) throw unexpectedReply('drop instance', begun);
    // The instance as a whole is announced once its set is gone: no per-user announcement.
    if (begun.length > 0) await userClaims(instanceId, begun.map((user) => ['-', user] as const), false);
    const left = await run(DROP_END, dropEndKeys(instanceId), [flag, instanceId, channel, ...begun]);
    if (typeof left !== 'number') throw unexpectedReply('drop instance', left);
    if (left === 0) await run(REMOVE_INSTANCE, [key.instances], [instanceId]);
    return left === -1 ? -1 : begun.length;
  }
  const dropEndKeys = (id: string) => [key.lease(id), key.instUsers(id), key.hints(id), key.instReplid(id), key.reassert(id)];

  /** Users' buckets whose master changed since the last check: every instance re-asserts its claims. */
  async function checkUsersMoved(instanceIds: readonly string[]): Promise<void> {
    const keys = [...new Set(Array.from({ length: DISCOVERY_USER_BUCKETS }, (_, b) => key.usersReplid(b)))];
    const moved = (await Promise.all(bySlot(redis, keys, (k) => k).map((group) => run(USERS_REPLID, group, [])))).some((r) => Array.isArray(r) && r.length > 0);
    if (!moved || instanceIds.length === 0) return;
    log.warn({ instances: instanceIds.length }, 'users\' registry keys moved to another Redis master (a failover, which may have lost its latest writes): every instance re-asserts its claims');
    await Promise.all(bySlot(redis, instanceIds, key.reassert).map((group) => run(ASK_REASSERT, group.map(key.reassert), [String(hintsTtlMs)])));
  }

  return {
    leaseMs,

    heartbeat: (instanceId, url) =>
      guarded(async () => {
        const [reply] = await Promise.all([
          run(HEARTBEAT, [key.lease(instanceId), key.hints(instanceId), key.instUsers(instanceId), key.instReplid(instanceId), key.reassert(instanceId)], [url, String(leaseMs), instanceId, channel, discoveryBeatChannel(prefix, instanceId)]),
          run(ADD_INSTANCE, [key.instances], [instanceId]),
        ]);
        if (!Array.isArray(reply) || typeof reply[0] !== 'number' || !isStringArray(reply[1])) throw unexpectedReply('heartbeat', reply);
        learn([instanceId]);
        return { renewed: reply[0] === 1, hints: reply[1] };
      }),

    goodbye: (instanceId) =>
      guarded(async () => {
        await dropInstance(instanceId, false);
      }),

    updateClaims: (instanceId, { add, remove }) =>
      guarded(async () => {
        if (add.length === 0 && remove.length === 0) return;
        await Promise.all([
          run(INSTANCE_CLAIMS, [key.instUsers(instanceId)], [String(remove.length), ...remove, ...add]),
          userClaims(instanceId, [...remove.map((u) => ['-', u] as const), ...add.map((u) => ['+', u] as const)]),
          ...(add.length > 0 ? [run(ADD_INSTANCE, [key.instances], [instanceId])] : []),
        ]);
      }),

    replaceClaims: (instanceId, users) =>
      guarded(async () => {
        const [dropped] = await Promise.all([run(REPLACE_INSTANCE_CLAIMS, [key.instUsers(instanceId)], [...users]), run(ADD_INSTANCE, [key.instances], [instanceId])]);
        if (!isStringArray(dropped)) throw unexpectedReply('replace claims', dropped);
        // Every wanted claim is added again: one that a sweep or a failover removed comes back.
        await userClaims(instanceId, [...dropped.map((u) => ['-', u] as const), ...users.map((u) => ['+', u] as const)]);
      }),

    lookup: (users) =>
      guarded(async () => {
        const found = new Map<string, InstanceRef[]>();
        if (users.length === 0) return found;
        const unknown = new Set<string>();
        const answers = new Map<string, [string, string][]>();
        await Promise.all(
          lookupGroups(users).map(async (g) => {
            const reply = await run(LOOKUP, [...g.users.map(key.user), ...g.leases.map(key.lease)], [String(g.users.length), ...g.leases]);
            if (!Array.isArray(reply) || reply.length !== g.users.length) throw unexpectedReply('lookup', reply);
            g.users.forEach((user, i) => {
              const flat: unknown = reply[i];
              if (!isStringArray(flat) || flat.length % 2 !== 0) throw unexpectedReply('lookup', flat);
              const pairs: [string, string][] = [];
              for (let j = 0; j + 1 < flat.length; j += 2) {
                const [instanceId, url] = [flat[j] as string, flat[j + 1] as string];
                pairs.push([instanceId, url]);
                if (url === '') unknown.add(instanceId);
              }
              answers.set(user, pairs);
            });
          }),
        );
        const urls = unknown.size > 0 ? await leasesOf([...unknown]) : new Map<string, string>();
        learn(unknown);
        for (const user of users) {
          const refs: InstanceRef[] = [];
          for (const [instanceId, url] of answers.get(user) ?? []) {
            const live = url || urls.get(instanceId);
            if (live) refs.push({ instanceId, url: live });
          }
          found.set(user, refs);
        }
        return found;
      }),

    presence: (users) =>
      guarded(async () => {
        const found = new Map<string, UserPresence>();
        if (users.length === 0) return found;
        const pending = new Map<string, { lastSeen: string; unknown: string[] }>();
        await Promise.all(
          lookupGroups(users).map(async (g) => {
            const reply = await run(PRESENCE, [...g.users.map(key.user), ...g.users.map(key.seen), ...g.leases.map(key.lease)], [String(g.users.length), ...g.leases]);
            if (!Array.isArray(reply) || reply.length !== g.users.length) throw unexpectedReply('presence', reply);
            g.users.forEach((user, i) => {
              const entry: unknown = reply[i];
              if (!Array.isArray(entry) || (entry[0] !== 0 && entry[0] !== 1)) throw unexpectedReply('presence', entry);
              if (entry[0] === 1) found.set(user, { online: true });
              else pending.set(user, { lastSeen: String(entry[1] ?? ''), unknown: entry.slice(2).map(String) });
            });
          }),
        );
        const ids = new Set([...pending.values()].flatMap((p) => p.unknown));
        const urls = ids.size > 0 ? await leasesOf([...ids]) : new Map<string, string>();
        learn(ids);
        for (const [user, p] of pending) {
          if (p.unknown.some((id) => urls.get(id))) found.set(user, { online: true });
          else found.set(user, p.lastSeen ? { online: false, lastSeen: Number(p.lastSeen) } : { online: false });
        }
        // In the order asked (callers rely on iteration order matching the request).
        return new Map(users.map((u) => [u, found.get(u) as UserPresence]));
      }),

    addHints: (instanceId, users) =>
      guarded(async () => {
        if (users.length === 0) return;
        await run(ADD_HINTS, [key.hints(instanceId)], [String(hintsTtlMs), ...users]);
      }),

    sweep: () =>
      guarded(async () => {
        const ids = await withTimeout(redis.sMembers(key.instances));
        knownInstances = new Set(ids.slice(0, MAX_KNOWN_INSTANCES));
        await checkUsersMoved(ids);
        if (ids.length === 0) return [];
        const leases = await leasesOf(ids);
        const lapsed = ids.filter((id) => !leases.get(id));
        // The script checks the lease again: it may have been renewed since it was read,
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
