/**
 * Who is in each room, as this gateway knows it: fetched from SvPersist, kept
 * while SvDiscover's change notifications reach this instance, and versioned.
 *
 * A change is answered only once it has taken effect everywhere (PROTOCOL.md):
 * the gateway that made it announces the room's new version on SvDiscover's
 * change channel and waits until every instance with a live lease has recorded
 * that it dropped what it knew of the room (or its lease lapsed). A notification
 * can be lost; an instance that missed one keeps what it knew at most
 * ROOM_CACHE_MS, and the wait is bounded by that, so a change still takes effect
 * everywhere before it is answered. An instance whose notifications stop keeps
 * nothing longer than UNSUBSCRIBED_CACHE_MS. A fetch that started before a change
 * and answers an older version than one already announced is asked again.
 */
import { createHash } from 'node:crypto';
import { CHANGE_ROOM, UnavailableError, bySlot, discoveryChangesChannel, discoveryKeys, errorMessage, type Logger, type Redis } from '@simplechat/shared';

export interface RoomRecord {
  room: string;
  name: string;
  owner: string;
  /** current members, earliest joined first */
  members: string[];
  version: number;
}

export interface RoomState extends RoomRecord {
  memberSet: ReadonlySet<string>;
}

export interface Membership {
  /** the room as this instance knows it; null when there is no such room (or it ended) */
  current(room: string): Promise<RoomState | null>;
  /** records a change this instance made and waits until every live instance has it (bounded) */
  announce(room: string, version: number): Promise<void>;
  /** a notification: another instance changed the room */
  changed(room: string, version: number): void;
  /** notifications started or stopped: nothing cached can be trusted */
  reset(): void;
}

export interface MembershipDeps {
  /** the room from storage; null when there is none */
  fetch(room: string): Promise<RoomRecord | null>;
  redis: Pick<Redis, 'eval' | 'evalSha' | 'publish' | 'sMembers' | 'hGetAll' | 'tag' | 'slotOf'>;
  /** SvDiscover's KEY_PREFIX (its change channel and leases) */
  keyPrefix: string;
  instanceId: string;
  /** change notifications reach this instance */
  isSubscribed(): boolean;
  log: Logger;
  /** how long a room is kept while notifications arrive; also bounds the wait of a change */
  cacheMs?: number;
}

export const ROOM_CACHE_MS = 30_000;
const UNSUBSCRIBED_CACHE_MS = 1000;
const WAIT_POLL_MS = 5;
const MAX_STALE_FETCHES = 5;
const WAIT_POLL_MAX_MS = 50;

// KEYS[1] the room's applied-versions hash, ARGV[1] instance id, ARGV[2] version, ARGV[3] ttl ms.
const APPLY = `
local v = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > v then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1`;
// KEYS: SvDiscover's leases of some instances (of one slot). Returns per lease 1 when it is alive.
const ALIVE = `
local out = {}
for i = 1, #KEYS do out[i] = redis.call('EXISTS', KEYS[i]) end
return out`;
const sha = (s: string) => createHash('sha1').update(s).digest('hex');
const APPLY_SHA = sha(APPLY);
const ALIVE_SHA = sha(ALIVE);

interface Entry {
  state: RoomState | null;
  until: number;
}

export function createMembership(deps: MembershipDeps): Membership {
  const log = deps.log.child({ component: 'membership' });
  const cacheMs = deps.cacheMs ?? ROOM_CACHE_MS;
  const cache = new Map<string, Entry>();
  const fetching = new Map<string, Promise<RoomState | null>>();
  /** the newest version announced per room: an older answer is stale */
  const announced = new Map<string, number>();
  const appliedKey = (room: string) => `${deps.keyPrefix}room-applied:${room}`;
  const discovery = discoveryKeys(deps.keyPrefix, (group) => deps.redis.tag(group));
  const run = (script: string, hash: string, options: { keys: string[]; arguments: string[] }) =>
    deps.redis.evalSha(hash, options).catch((err: unknown) => {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) return deps.redis.eval(script, options);
      throw err;
    });

  /** The instances with a live lease that have not applied the version (instances and leases are SvDiscover's keys). */
  async function behindOf(room: string, version: number): Promise<string[]> {
    const [ids, applied] = await Promise.all([deps.redis.sMembers(discovery.instances), deps.redis.hGetAll(appliedKey(room))]);
    const candidates = ids.filter((id) => Number(applied[id] ?? 0) < version);
    if (candidates.length === 0) return [];
    // A lease per instance, each in its instance's slot on a cluster.
    const groups = bySlot(deps.redis, candidates, discovery.lease);
    const alive = await Promise.all(groups.map((group) => run(ALIVE, ALIVE_SHA, { keys: group.map(discovery.lease), arguments: [] })));
    return groups.flatMap((group, g) => group.filter((_, i) => (alive[g] as number[] | undefined)?.[i] === 1));
  }

  async function load(room: string): Promise<RoomState | null> {
    for (let attempt = 1; ; attempt++) {
      const wanted = announced.get(room) ?? 0;
      const record = await deps.fetch(room);
      // Started before a change: ask again (storage committed the change before it was announced).
      if (record && record.version < (announced.get(room) ?? 0)) {
        if (attempt < MAX_STALE_FETCHES) continue;
        throw new UnavailableError(`room ${room} could not be read at its current version; retry`);
      }
      const state = record && { ...record, memberSet: new Set(record.members) };
      if ((announced.get(room) ?? 0) === wanted) cache.set(room, { state, until: Date.now() + (deps.isSubscribed() ? cacheMs : UNSUBSCRIBED_CACHE_MS) });
      return state;
    }
  }

  function apply(room: string, version: number): void {
    if (version > (announced.get(room) ?? 0)) announced.set(room, version);
    cache.delete(room);
    fetching.delete(room);
    run(APPLY, APPLY_SHA, { keys: [appliedKey(room)], arguments: [deps.instanceId, String(version), String(cacheMs * 2)] }).catch((err: unknown) =>
      log.debug({ room, err: errorMessage(err) }, 'could not record an applied room change; the change waits for this instance until ROOM_CACHE_MS'),
    );
  }

  return {
    current(room) {
      const entry = cache.get(room);
      if (entry && entry.until > Date.now()) return Promise.resolve(entry.state);
      let flight = fetching.get(room);
      if (!flight) {
        flight = load(room).finally(() => {
          if (fetching.get(room) === flight) fetching.delete(room);
        });
        fetching.set(room, flight);
      }
      return flight;
    },
    async announce(room, version) {
      apply(room, version);
      const deadline = Date.now() + cacheMs;
      try {
        await deps.redis.publish(discoveryChangesChannel(deps.keyPrefix), `${CHANGE_ROOM}\n${room}\n${version}`);
      } catch (err) {
        log.warn({ room, err: errorMessage(err) }, 'could not announce a room change; answering once every instance has dropped what it knew (ROOM_CACHE_MS)');
      }
      let pause = WAIT_POLL_MS;
      for (;;) {
        let behind: unknown;
        try {
          behind = await behindOf(room, version);
        } catch {
          behind = undefined; // Redis away: the deadline bounds the wait
        }
        if (Array.isArray(behind) && behind.length === 0) return;
        if (Date.now() >= deadline) {
          log.warn({ room, version, behind }, 'instances did not confirm a room change; answering now that what they knew has expired');
          return;
        }
        await new Promise((r) => setTimeout(r, pause));
        pause = Math.min(WAIT_POLL_MAX_MS, pause * 2);
      }
    },
    changed(room, version) {
      apply(room, version);
    },
    reset() {
      cache.clear();
      fetching.clear();
    },
  };
}
