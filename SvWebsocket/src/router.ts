/**
 * Routing a serialised frame to users: local connections first, then the
 * instances SvDiscover says hold them. Frames for one peer are sent as one
 * POST /internal/deliver over a keep-alive undici pool, with at most
 * PEER_WINDOW requests in flight per peer: while the window is full, frames
 * collect into the peer's next request, so a busy peer gets fewer, larger
 * batches instead of a growing line of small requests.
 */
import { Pool } from 'undici';
import { errorMessage, createLogThrottle, type Logger } from '@simplechat/shared';
import type { ConnectionRegistry, Connection } from './connections';
import type { Discovery } from './discovery';
import type { RouterMetrics } from './metrics';

export interface Router {
  route(frame: string, users: readonly string[], exclude?: Connection): void;
  close(): Promise<void>;
}

export interface RouterDeps {
  registry: ConnectionRegistry;
  discovery: Discovery;
  instanceId: string;
  internalToken: string;
  forwardTimeoutMs: number;
  log: Logger;
  metrics?: RouterMetrics;
}

interface PeerQueue {
  instanceId: string;
  url: string;
  items: { users: string[]; frame: string }[];
}

const FAILURE_LOG_INTERVAL_MS = 10_000;

const PEER_CONNECTIONS = 8;
/** requests in flight per peer */
const PEER_WINDOW = 4;
/** frames waiting for one peer before the oldest are given up (recipients sync) */
const MAX_QUEUED_FRAMES_PER_PEER = 100_000;
/** frames in one request */
const MAX_FRAMES_PER_REQUEST = 5_000;

export function createRouter(deps: RouterDeps): Router {
  const log = deps.log.child({ component: 'router' });
  // A dead peer fails every tick until its lease lapses: one warn per interval, the rest at debug.
  const failureLog = createLogThrottle(FAILURE_LOG_INTERVAL_MS);
  const pools = new Map<string, Pool>();
  const queues = new Map<string, PeerQueue>();
  const inFlightByPeer = new Map<string, number>();
  let scheduled = false;
  const inflight = new Set<Promise<void>>();
  const authorization = `Bearer ${deps.internalToken}`;

  function pool(url: string): Pool {
    let p = pools.get(url);
    if (!p) {
      p = new Pool(url, { connections: PEER_CONNECTIONS, keepAliveTimeout: 30_000, headersTimeout: deps.forwardTimeoutMs, bodyTimeout: deps.forwardTimeoutMs, connectTimeout: deps.forwardTimeoutMs });
      pools.set(url, p);
    }
    return p;
  }

  function failed(peer: PeerQueue, err: unknown): void {
    const users = [...new Set(peer.items.flatMap((i) => i.users))];
    const detail = { peer: peer.instanceId, url: peer.url, frames: peer.items.length, err: errorMessage(err) };
    if (failureLog.shouldLog()) log.warn({ ...detail, failuresSoFar: failureLog.count }, 'forward to peer instance failed; recipients catch up by sync');
    else log.debug(detail, 'forward to peer instance failed');
    deps.discovery.reportFailedDelivery(peer.instanceId, users);
  }

  async function forward(peer: PeerQueue): Promise<void> {
    const startedAt = performance.now();
    try {
      const res = await pool(peer.url).request({
        method: 'POST',
        path: '/internal/deliver',
        headers: { authorization, 'content-type': 'application/json' },
        body: JSON.stringify({ items: peer.items }),
      });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}`);
      deps.metrics?.forwarded(peer.items.length, (performance.now() - startedAt) / 1000, true);
    } catch (err) {
      deps.metrics?.forwarded(peer.items.length, (performance.now() - startedAt) / 1000, false);
      failed(peer, err);
    }
  }

  /** Sends what is queued for a peer while its window has room. */
  function pump(url: string): void {
    const queued = queues.get(url);
    while (queued && queued.items.length > 0 && (inFlightByPeer.get(url) ?? 0) < PEER_WINDOW) {
      const items = queued.items.splice(0, MAX_FRAMES_PER_REQUEST);
      if (queued.items.length === 0) queues.delete(url);
      inFlightByPeer.set(url, (inFlightByPeer.get(url) ?? 0) + 1);
      const p = forward({ instanceId: queued.instanceId, url, items }).finally(() => {
        inflight.delete(p);
        const left = (inFlightByPeer.get(url) ?? 1) - 1;
        if (left > 0) inFlightByPeer.set(url, left);
        else inFlightByPeer.delete(url);
        pump(url);
      });
      inflight.add(p);
    }
    if (queued && queued.items.length > MAX_QUEUED_FRAMES_PER_PEER) {
      // The peer does not keep up at all: give up the oldest frames rather than grow without bound.
      const dropped = queued.items.splice(0, queued.items.length - MAX_QUEUED_FRAMES_PER_PEER);
      failed({ instanceId: queued.instanceId, url, items: dropped }, new Error('peer queue full'));
    }
  }

  function flush(): void {
    scheduled = false;
    for (const url of [...queues.keys()]) pump(url);
  }

  return {
    route(frame, users, exclude) {
      deps.registry.deliver(users, frame, exclude);
      deps.discovery.lookup(users).then(
        (where) => {
          const byPeer = new Map<string, string[]>();
          for (const u of users) {
            for (const ref of where.get(u) ?? []) {
              if (ref.instanceId === deps.instanceId) continue;
              let q = queues.get(ref.url);
              if (!q) queues.set(ref.url, (q = { instanceId: ref.instanceId, url: ref.url, items: [] }));
              let list = byPeer.get(ref.url);
              if (!list) {
                byPeer.set(ref.url, (list = []));
                q.items.push({ users: list, frame });
              }
              list.push(u);
            }
          }
          if (byPeer.size > 0 && !scheduled) {
            scheduled = true;
            setImmediate(flush);
          }
        },
        () => {
          // SvDiscover is down (already logged): remote recipients catch up by sync.
        },
      );
    },
    async close() {
      if (scheduled) flush();
      while (inflight.size > 0) await Promise.all([...inflight]);
      await Promise.all([...pools.values()].map((p) => p.close().catch(() => undefined)));
      pools.clear();
    },
  };
}
