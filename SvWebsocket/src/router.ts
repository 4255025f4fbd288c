/**
 * Routing a serialised frame to users: local connections first, then the
 * instances SvDiscover says hold them. Everything leaving for one peer within
 * a tick goes as one POST /internal/deliver over a keep-alive undici pool.
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
const MAX_INFLIGHT_PER_PEER = PEER_CONNECTIONS * 4;

export function createRouter(deps: RouterDeps): Router {
  const log = deps.log.child({ component: 'router' });
  // A dead peer fails every tick until its lease lapses: one warn per interval, the rest at debug.
  const failureLog = createLogThrottle(FAILURE_LOG_INTERVAL_MS);
  const pools = new Map<string, Pool>();
  let queues = new Map<string, PeerQueue>();
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

  // Forwards in flight per peer. A peer that stops answering would otherwise collect a queue of
  // requests behind its busy connections; past the cap a forward fails at once (recipients sync).
  const busy = new Map<string, number>();

  async function forward(peer: PeerQueue): Promise<void> {
    const startedAt = performance.now();
    const n = busy.get(peer.url) ?? 0;
    busy.set(peer.url, n + 1);
    try {
      if (n >= MAX_INFLIGHT_PER_PEER) throw new Error(`${n} forwards already waiting on this peer`);
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
      const users = [...new Set(peer.items.flatMap((i) => i.users))];
      const detail = { peer: peer.instanceId, url: peer.url, frames: peer.items.length, err: errorMessage(err) };
      if (failureLog.shouldLog()) log.warn({ ...detail, failuresSoFar: failureLog.count }, 'forward to peer instance failed; recipients catch up by sync');
      else log.debug(detail, 'forward to peer instance failed');
      deps.discovery.reportFailedDelivery(peer.instanceId, users);
    } finally {
      const left = (busy.get(peer.url) ?? 1) - 1;
      if (left > 0) busy.set(peer.url, left);
      else busy.delete(peer.url);
    }
  }

  function flush(): void {
    scheduled = false;
    const batch = queues;
    queues = new Map();
    for (const peer of batch.values()) {
      const p = forward(peer);
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    }
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
      await Promise.all([...inflight]);
      await Promise.all([...pools.values()].map((p) => p.close().catch(() => undefined)));
      pools.clear();
    },
  };
}
