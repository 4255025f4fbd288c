/**
 * This instance's side of SvDiscover: claims (batched per tick), lookups
 * (batched per tick), the lease heartbeat, re-asserting claims when the lease
 * lapsed or Redis forgot them, and failed-delivery hints.
 */
import {
  heartbeatResponse,
  lookupResponse,
  MAX_USERS_PER_CALL,
  errorMessage,
  type InstanceRef,
  type JsonClient,
  type Logger,
} from '@simplechat/shared';
import type { DiscoveryMetrics } from './metrics';

export interface Discovery {
  /** records that the user's presence here changed; resolves true once SvDiscover has it */
  claimChanged(userId: string): Promise<boolean>;
  lookup(users: readonly string[]): Promise<Map<string, InstanceRef[]>>;
  reportFailedDelivery(instanceId: string, users: readonly string[]): void;
  start(): Promise<void>;
  isUp(): boolean;
  close(): Promise<void>;
}

export interface DiscoveryDeps {
  client: JsonClient;
  instanceId: string;
  url: string;
  heartbeatMs: number;
  localUsers(): string[];
  hasLocal(userId: string): boolean;
  /** claims may have been missing: live deliveries to these connections may have been missed */
  onClaimsRestored(): void;
  onHints(users: string[]): void;
  log: Logger;
  metrics?: DiscoveryMetrics;
  /** how long a lookup answer is reused (0: ask SvDiscover every time) */
  cacheMs: number;
}

export function createDiscovery(deps: DiscoveryDeps): Discovery {
  const log = deps.log.child({ component: 'discovery' });
  const id = encodeURIComponent(deps.instanceId);
  let up = false;
  let claimsDirty = false;
  let closed = false;
  let closing: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let beating: Promise<void> | undefined;

  let claimQueue = new Set<string>();
  let claimWaiters: ((ok: boolean) => void)[] = [];
  let claimScheduled = false;

  // Lookup answers reused for cacheMs. A stale entry can only delay a live delivery to a
  // connection that registered within cacheMs; the gateway hints those connections to sync.
  const cache = new Map<string, { refs: InstanceRef[]; until: number }>();
  let lookupQueue = new Set<string>();
  let lookupWaiters: { resolve(m: Map<string, InstanceRef[]>): void; reject(e: Error): void }[] = [];
  let lookupScheduled = false;

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

  async function flushLookups(): Promise<void> {
    lookupScheduled = false;
    const users = [...lookupQueue];
    const waiters = lookupWaiters;
    lookupQueue = new Set();
    lookupWaiters = [];
    const result = new Map<string, InstanceRef[]>();
    try {
      for (let i = 0; i < users.length; i += MAX_USERS_PER_CALL) {
        const res = await deps.client.request('POST', '/internal/lookup', lookupResponse, { users: users.slice(i, i + MAX_USERS_PER_CALL) });
        const until = Date.now() + deps.cacheMs;
        for (const [u, refs] of Object.entries(res.users)) {
          result.set(u, refs);
          if (deps.cacheMs > 0) cache.set(u, { refs, until });
        }
      }
      setUp(true);
      for (const w of waiters) w.resolve(result);
    } catch (err) {
      setUp(false, err);
      for (const w of waiters) w.reject(err as Error);
    }
  }

  async function heartbeat(): Promise<void> {
    const now = Date.now();
    for (const [u, entry] of cache) if (entry.until <= now) cache.delete(u);
    try {
      const res = await deps.client.request('PUT', `/internal/instances/${id}`, heartbeatResponse, { url: deps.url });
      setUp(true);
      if (!res.renewed || claimsDirty) {
        claimsDirty = false;
        const users = deps.localUsers();
        try {
          await deps.client.request('PUT', `/internal/instances/${id}/claims`, null, { url: deps.url, users });
          if (users.length > 0) log.info({ users: users.length, leaseLapsed: !res.renewed }, 're-asserted claims in SvDiscover');
          deps.onClaimsRestored();
        } catch (err) {
          claimsDirty = true;
          throw err;
        }
      }
      if (res.hints.length > 0) deps.onHints(res.hints);
    } catch (err) {
      claimsDirty = true;
      setUp(false, err);
    }
  }

  function loop(): void {
    if (closed) return;
    beating = heartbeat().finally(() => {
      beating = undefined;
      if (!closed) timer = setTimeout(loop, deps.heartbeatMs);
    });
  }

  return {
    claimChanged(userId) {
      claimQueue.add(userId);
      const p = new Promise<boolean>((resolve) => claimWaiters.push(resolve));
      if (!claimScheduled) {
        claimScheduled = true;
        setImmediate(() => void flushClaims());
      }
      return p;
    },
    lookup(users) {
      deps.metrics?.lookups(users.length);
      const now = Date.now();
      const cached = new Map<string, InstanceRef[]>();
      let misses = 0;
      for (const u of users) {
        const entry = cache.get(u);
        if (entry && entry.until > now) cached.set(u, entry.refs);
        else {
          lookupQueue.add(u);
          misses++;
        }
      }
      if (cached.size > 0) deps.metrics?.cacheHits(cached.size);
      if (misses === 0) return Promise.resolve(cached);
      const p = new Promise<Map<string, InstanceRef[]>>((resolve, reject) => lookupWaiters.push({ resolve, reject }));
      if (!lookupScheduled) {
        lookupScheduled = true;
        setImmediate(() => void flushLookups());
      }
      if (cached.size === 0) return p;
      return p.then((fetched) => {
        for (const [u, refs] of cached) fetched.set(u, refs);
        return fetched;
      });
    },
    reportFailedDelivery(instanceId, users) {
      // That instance may be gone: stop routing to it from the cache.
      for (const [u, entry] of cache) if (entry.refs.some((r) => r.instanceId === instanceId)) cache.delete(u);
      deps.client.request('POST', '/internal/hints', null, { instanceId, users: [...users] }).catch((err: unknown) => {
        log.debug({ err: errorMessage(err) }, 'could not leave a sync hint');
      });
    },
    async start() {
      await heartbeat();
      timer = setTimeout(loop, deps.heartbeatMs);
    },
    isUp: () => up,
    close() {
      closing ??= (async () => {
        closed = true;
        if (timer) clearTimeout(timer);
        await beating;
        // Goodbye: drop every claim of this instance at once.
        await deps.client.request('DELETE', `/internal/instances/${id}`, null).catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'could not drop claims on shutdown; they expire with the lease'));
      })();
      return closing;
    },
  };
}
