/**
 * This instance's side of SvDiscover: claims (batched per tick, sent in
 * order, one call at a time, re-assertions included), lookups
 * (batched per tick) and their cache, the lease heartbeat, re-asserting claims
 * when the lease lapsed or Redis forgot them, and failed-delivery hints.
 *
 * Cached lookup answers live subscribedCacheMs while this instance receives
 * SvDiscover's change notifications (Redis pub/sub, see discovery-changes.ts),
 * which drop the answers they name; otherwise cacheMs. Each (re)subscription and
 * each loss of it empties the cache, since notifications may have been missed.
 * A lookup that was in flight when a notification named one of its users (or
 * an instance in its answer), or when the subscription started or stopped,
 * still answers its callers but is not cached: its answer may predate the change.
 * A user is asked about once at a time: sends to a user whose lookup is under
 * way wait for that answer. An answer still in use near the end of its time in
 * the cache is asked again in the background, so the answers of users who get
 * messages do not all lapse at once, every cache period, into a burst of
 * lookups that each hold up a send.
 */
import {
  heartbeatResponse,
  lookupResponse,
  presenceResponse,
  MAX_USERS_PER_CALL,
  errorMessage,
  type DiscoveryChange,
  type InstanceRef,
  type JsonClient,
  type Logger,
  type Redis,
  type UserPresence,
} from '@simplechat/shared';
import { EventEmitter } from 'node:events';
import { createChangeSubscriber, type ChangeSubscriber } from './discovery-changes';
import type { DiscoveryMetrics } from './metrics';

/** What discovery tells the rest of the gateway (Discovery.on). */
export interface DiscoveryEvents {
  /** claims may have been missing: live deliveries to this instance's connections may have been missed */
  claimsRestored: () => void;
  /** deliveries to these users' connections here failed elsewhere: they should sync */
  hints: (users: string[]) => void;
  /** a room's membership changed (its new version), notified on SvDiscover's change channel */
  roomChanged: (room: string, version: number) => void;
  /** change notifications started or stopped: what was cached from them may be stale */
  changesReset: () => void;
  /** these users' set of instances changed (a connection came or went somewhere) */
  usersChanged: (users: readonly string[]) => void;
  /** every answer naming this instance is stale (it said goodbye, was swept, or moved) */
  instanceChanged: (instanceId: string) => void;
}

export interface Discovery {
  on<E extends keyof DiscoveryEvents>(event: E, listener: DiscoveryEvents[E]): void;
  /** records that the user's presence here changed; resolves true once SvDiscover has it */
  claimChanged(userId: string): Promise<boolean>;
  lookup(users: readonly string[]): Promise<Map<string, InstanceRef[]>>;
  /** each user online or not, asked now (never from the cache) */
  presence(users: readonly string[]): Promise<Map<string, UserPresence>>;
  reportFailedDelivery(instanceId: string, users: readonly string[]): void;
  start(): Promise<void>;
  isUp(): boolean;
  /** change notifications reach this instance (what is cached from them is dropped when they change) */
  isSubscribed(): boolean;
  close(): Promise<void>;
}

export interface DiscoveryDeps {
  client: JsonClient;
  instanceId: string;
  url: string;
  heartbeatMs: number;
  localUsers(): string[];
  hasLocal(userId: string): boolean;
  log: Logger;
  metrics?: DiscoveryMetrics;
  /** how long a lookup answer is reused while change notifications are not received (0: not cached) */
  cacheMs: number;
  /** how long while they are (0: do not subscribe; cacheMs applies always) */
  subscribedCacheMs: number;
  /** the clock cache entries expire by (default Date.now) */
  now?: () => number;
  /** the Redis on which SvDiscover publishes its change notifications */
  changes?: {
    /** a connection of its own (Redis.subscriber), opened by start() and closed by close() */
    redis: Pick<Redis, 'subscriber'>;
    /** SvDiscover's KEY_PREFIX */
    keyPrefix: string;
  };
}

/** A cached lookup answer: used until `until`; asked again in the background once used after `refreshAt`. */
interface CacheEntry {
  refs: InstanceRef[];
  until: number;
  refreshAt: number;
}

/** The users of one lookup call and its answer, shared by every caller waiting for one of them. */
interface LookupBatch {
  users: Set<string>;
  answer: Promise<Map<string, InstanceRef[]>>;
  settle: { resolve(m: Map<string, InstanceRef[]>): void; reject(e: Error): void };
}

/** An answer used in the last 1/REFRESH_AHEAD_DIVISOR of its time in the cache is renewed in the background. */
const REFRESH_AHEAD_DIVISOR = 6;
/** The heartbeat's interval while SvDiscover is unreachable, when HEARTBEAT_MS is longer. */
const UNREACHABLE_RETRY_MS = 500;

/** A lookup sent to SvDiscover and not answered yet, and what was invalidated meanwhile. */
interface Flight {
  users: ReadonlySet<string>;
  staleUsers: Set<string>;
  staleInstances: Set<string>;
  /** the whole cache was emptied or the subscription changed: cache nothing of this answer */
  isStale: boolean;
}

export function createDiscovery(deps: DiscoveryDeps): Discovery {
  const log = deps.log.child({ component: 'discovery' });
  const events = new EventEmitter();
  const clock = deps.now ?? Date.now;
  const id = encodeURIComponent(deps.instanceId);
  /** undefined until the first call answers or fails: an instance that never reached SvDiscover says so too */
  let up: boolean | undefined;
  let claimsDirty = false;
  /** a heartbeat has been answered before: a missing lease from now on means it lapsed */
  let hasHadLease = false;
  let closed = false;
  let closing: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let beating: Promise<void> | undefined;

  let claimQueue = new Set<string>();
  let claimWaiters: ((ok: boolean) => void)[] = [];
  let claimScheduled = false;
  // Claim changes and re-assertions reach SvDiscover one at a time, in the order this instance
  // made them. Sent side by side, a re-assertion listing the users local when it was computed
  // could land after the claim of a user who registered meanwhile, and unclaim that user for as
  // long as the connection lasts (nothing would forward to it; it would get messages by sync).
  let claimsLane: Promise<unknown> = Promise.resolve();
  function inClaimsLane<T>(op: () => Promise<T>): Promise<T> {
    const run = claimsLane.then(op, op);
    claimsLane = run.catch(() => undefined);
    return run;
  }

  // Lookup answers. Unsubscribed, a stale entry can only delay a live delivery to a connection
  // that registered within cacheMs, and the gateway hints those connections to sync; subscribed,
  // only until the notification arrives (on a link that died unnoticed, until the missing
  // heartbeat echoes give it away).
  const cache = new Map<string, CacheEntry>();
  const flights = new Set<Flight>();
  let changes: ChangeSubscriber | undefined;
  /** the lookup batch collecting this tick's users, sent on the next tick */
  let nextBatch: LookupBatch | undefined;
  /** the batch (collecting or sent) that will answer each user: one question per user at a time */
  const answerOf = new Map<string, Promise<Map<string, InstanceRef[]>>>();

  function setUp(value: boolean, err?: unknown): void {
    if (value === up) return;
    up = value;
    if (value) log.info({ url: deps.client.baseUrl }, 'SvDiscover reachable');
    else log.warn({ url: deps.client.baseUrl, err: errorMessage(err) }, 'SvDiscover unreachable; same-instance delivery continues, other messages reach clients by sync');
  }

  async function flushClaims(): Promise<void> {
    claimScheduled = false;
    const users = [...claimQueue];
    const waiters = claimWaiters;
    claimQueue = new Set();
    claimWaiters = [];
    if (closed) {
      for (const w of waiters) w(true);
      return;
    }
    const add = users.filter((u) => deps.hasLocal(u));
    const remove = users.filter((u) => !deps.hasLocal(u));
    let ok = true;
    try {
      for (let i = 0; i < Math.max(add.length, remove.length); i += MAX_USERS_PER_CALL) {
        await deps.client.request('POST', '/internal/claims', null, { instanceId: deps.instanceId, url: deps.url, add: add.slice(i, i + MAX_USERS_PER_CALL), remove: remove.slice(i, i + MAX_USERS_PER_CALL) });
      }
      setUp(true);
    } catch (err) {
      ok = false;
      claimsDirty = true; // the next successful heartbeat re-asserts the whole set
      setUp(false, err);
    }
    for (const w of waiters) w(ok);
  }

  const isSubscribed = () => changes?.isSubscribed() ?? false;

  // Each drop also stops later lookups from waiting for an answer already on its way, which may
  // predate the change: they ask again (the answer still goes to the callers that asked before).
  function dropAll(): void {
    cache.clear();
    answerOf.clear();
    for (const f of flights) f.isStale = true;
  }

  function dropInstance(instanceId: string): void {
    for (const [u, entry] of cache) if (entry.refs.some((r) => r.instanceId === instanceId)) cache.delete(u);
    answerOf.clear();
  }

  function onChange(change: DiscoveryChange | undefined): void {
    if (!change) {
      deps.metrics?.invalidated('all', 1);
      dropAll();
      events.emit('changesReset');
    } else if (change.kind === 'users') {
      deps.metrics?.invalidated('user', change.users.length);
      for (const u of change.users) {
        cache.delete(u);
        answerOf.delete(u);
        for (const f of flights) if (f.users.has(u)) f.staleUsers.add(u);
      }
      events.emit('usersChanged', change.users);
    } else if (change.kind === 'room') {
      events.emit('roomChanged', change.room, change.version);
    } else {
      deps.metrics?.invalidated('instance', 1);
      dropInstance(change.instanceId);
      for (const f of flights) f.staleInstances.add(change.instanceId);
      events.emit('instanceChanged', change.instanceId);
    }
  }

  /** Adds the user to the batch of this tick (sent on the next one); resolves with that batch's answer. */
  function ask(u: string): Promise<Map<string, InstanceRef[]>> {
    let batch = nextBatch;
    if (!batch) {
      let settle!: LookupBatch['settle'];
      const answer = new Promise<Map<string, InstanceRef[]>>((resolve, reject) => (settle = { resolve, reject }));
      // A refresh has no caller waiting: its failure is already logged by setUp.
      answer.catch(() => undefined);
      batch = nextBatch = { users: new Set(), answer, settle };
      const toSend = batch;
      setImmediate(() => void flushLookups(toSend));
    }
    batch.users.add(u);
    answerOf.set(u, batch.answer);
    return batch.answer;
  }

  async function flushLookups(batch: LookupBatch): Promise<void> {
    if (nextBatch === batch) nextBatch = undefined;
    const flight: Flight = { users: batch.users, staleUsers: new Set(), staleInstances: new Set(), isStale: false };
    const users = [...batch.users];
    const result = new Map<string, InstanceRef[]>();
    flights.add(flight);
    try {
      for (let i = 0; i < users.length; i += MAX_USERS_PER_CALL) {
        const asking = users.slice(i, i + MAX_USERS_PER_CALL);
        deps.metrics?.asked(asking.length);
        const res = await deps.client.request('POST', '/internal/lookup', lookupResponse, { users: asking });
        // No subscription change can have happened meanwhile (it would have made the flight stale).
        const ttlMs = isSubscribed() ? deps.subscribedCacheMs : deps.cacheMs;
        const now = clock();
        let renewed = 0;
        for (const [u, refs] of Object.entries(res.users)) {
          result.set(u, refs);
          if (ttlMs > 0 && !flight.isStale && !flight.staleUsers.has(u) && !refs.some((r) => flight.staleInstances.has(r.instanceId))) {
            if ((cache.get(u)?.until ?? 0) > now) renewed++;
            cache.set(u, { refs, until: now + ttlMs, refreshAt: now + ttlMs - ttlMs / REFRESH_AHEAD_DIVISOR });
          }
        }
        if (renewed > 0) deps.metrics?.renewed(renewed);
      }
      setUp(true);
      batch.settle.resolve(result);
    } catch (err) {
      setUp(false, err);
      batch.settle.reject(err as Error);
    } finally {
      flights.delete(flight);
      for (const u of users) if (answerOf.get(u) === batch.answer) answerOf.delete(u);
    }
  }

  function startChanges(): void {
    if (!deps.changes || deps.subscribedCacheMs <= 0 || changes) return;
    let hasSubscribed = false;
    changes = createChangeSubscriber({
      redis: deps.changes.redis,
      keyPrefix: deps.changes.keyPrefix,
      instanceId: deps.instanceId,
      log,
      onChange,
      onSubscribed() {
        dropAll();
        events.emit('changesReset');
        deps.metrics?.invalidated('all', 1);
        deps.metrics?.changesSubscribed(true);
        if (hasSubscribed) log.info({ subscribedCacheMs: deps.subscribedCacheMs }, 'SvDiscover change notifications are back; emptied the lookup cache (changes may have been missed), answers are reused until they change, at most DISCOVERY_CACHE_SUBSCRIBED_MS');
        else log.info({ subscribedCacheMs: deps.subscribedCacheMs }, 'receiving SvDiscover change notifications; lookup answers are reused until they change, at most DISCOVERY_CACHE_SUBSCRIBED_MS');
        hasSubscribed = true;
      },
      onLost(reason) {
        dropAll();
        events.emit('changesReset');
        deps.metrics?.invalidated('all', 1);
        deps.metrics?.changesSubscribed(false);
        log.warn({ reason, cacheMs: deps.cacheMs }, 'lost SvDiscover change notifications; emptied the lookup cache, answers are reused for DISCOVERY_CACHE_MS only until the notifications are back');
      },
    });
  }

  async function heartbeat(): Promise<void> {
    const now = clock();
    for (const [u, entry] of cache) if (entry.until <= now) cache.delete(u);
    try {
      const res = await deps.client.request('PUT', `/internal/instances/${id}`, heartbeatResponse, { url: deps.url });
      setUp(true);
      changes?.heartbeatAnswered();
      const hasRenewed = hasHadLease;
      hasHadLease = true;
      if (!res.renewed || claimsDirty) {
        claimsDirty = false;
        await inClaimsLane(async () => {
          // Who is local now, not when the heartbeat began: claims queued before this ran are in it.
          const users = deps.localUsers();
          try {
            await deps.client.request('PUT', `/internal/instances/${id}/claims`, null, { url: deps.url, users });
            // The first heartbeat of a new instance finds no lease: that is its start, not a lapse.
            if (users.length > 0 && hasRenewed) log.info({ users: users.length, leaseLapsed: !res.renewed }, 're-asserted claims in SvDiscover');
          } catch (err) {
            claimsDirty = true;
            throw err;
          }
        });
        events.emit('claimsRestored');
      }
      if (res.hints.length > 0) events.emit('hints', res.hints);
    } catch (err) {
      claimsDirty = true;
      setUp(false, err);
    }
  }

  /** While SvDiscover is unreachable (a cluster starting all at once, a restart) it is asked again sooner. */
  const nextBeatMs = () => (up === false ? Math.min(deps.heartbeatMs, UNREACHABLE_RETRY_MS) : deps.heartbeatMs);

  function loop(): void {
    if (closed) return;
    beating = heartbeat().finally(() => {
      beating = undefined;
      if (!closed) timer = setTimeout(loop, nextBeatMs());
    });
  }

  return {
    on(event, listener) {
      events.on(event, listener);
    },
    claimChanged(userId) {
      // Shutting down: the goodbye drops every claim of this instance at once.
      if (closed) return Promise.resolve(true);
      claimQueue.add(userId);
      const p = new Promise<boolean>((resolve) => claimWaiters.push(resolve));
      if (!claimScheduled) {
        claimScheduled = true;
        setImmediate(() => void inClaimsLane(flushClaims));
      }
      return p;
    },
    lookup(users) {
      deps.metrics?.lookups(users.length);
      const now = clock();
      const found = new Map<string, InstanceRef[]>();
      let waits: Set<Promise<Map<string, InstanceRef[]>>> | undefined;
      let missed: string[] | undefined;
      for (const u of users) {
        const entry = cache.get(u);
        if (entry && entry.until > now) {
          found.set(u, entry.refs);
          // Near its end, an answer in use is asked again in the background: users who get messages
          // keep their answers, and no send waits for a lookup because one lapsed.
          if (now >= entry.refreshAt && !answerOf.has(u)) void ask(u);
          continue;
        }
        (waits ??= new Set()).add(answerOf.get(u) ?? ask(u));
        (missed ??= []).push(u);
      }
      if (found.size > 0) deps.metrics?.cacheHits(found.size);
      if (!waits || !missed) return Promise.resolve(found);
      const asked = missed;
      return Promise.all(waits).then((answers) => {
        for (const answer of answers) for (const u of asked) {
          const refs = answer.get(u);
          if (refs) found.set(u, refs);
        }
        return found;
      });
    },
    async presence(users) {
      const found = new Map<string, UserPresence>();
      for (let i = 0; i < users.length; i += MAX_USERS_PER_CALL) {
        const res = await deps.client.request('POST', '/internal/presence', presenceResponse, { users: users.slice(i, i + MAX_USERS_PER_CALL) });
        for (const [u, p] of Object.entries(res.users)) found.set(u, p);
      }
      setUp(true);
      return found;
    },
    reportFailedDelivery(instanceId, users) {
      // That instance may be gone: stop routing to it from the cache.
      dropInstance(instanceId);
      deps.client.request('POST', '/internal/hints', null, { instanceId, users: [...users] }).catch((err: unknown) => {
        log.debug({ err: errorMessage(err) }, 'could not leave a sync hint');
      });
    },
    async start() {
      deps.metrics?.changesSubscribed(false);
      startChanges();
      await heartbeat();
      timer = setTimeout(loop, nextBeatMs());
    },
    isUp: () => up === true,
    isSubscribed,
    close() {
      closing ??= (async () => {
        closed = true;
        if (timer) clearTimeout(timer);
        await changes?.close();
        await beating;
        // Goodbye: drop every claim of this instance at once, after any claim call already under way.
        await inClaimsLane(() => deps.client.request('DELETE', `/internal/instances/${id}`, null)).catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'could not drop claims on shutdown; they expire with the lease'));
      })();
      return closing;
    },
  };
}
