/**
 * Routing a serialised frame to users: local connections first, then the
 * instances SvDiscover says hold them, over the peer link (peer-link.ts): one
 * long-lived WebSocket to each peer, so the hot path carries no HTTP parsing,
 * routing or per-request headers, and everything for one peer within one
 * flush (the next tick, or the pacer's interval under load) goes out as one
 * message. At most PEER_WINDOW batches per peer wait for
 * their ack; while the window is full, frames collect into the peer's next
 * batch, so a busy peer gets fewer, larger batches instead of a growing line
 * of small ones. Frames that do not reach a peer (timeout, closed or refused
 * link, a peer being retried after failed connects) are reported to
 * SvDiscover, which leaves their recipients a sync hint.
 */
import { errorMessage, createLogThrottle, type InstanceRef, type Logger } from '@simplechat/shared';
import type { ConnectionRegistry } from './connections';
import type { Session } from './session';
import type { Discovery } from './discovery';
import type { RouterMetrics } from './metrics';
import { createPeerLink, type PeerLink, type PeerLinkItem } from './peer-link';
import { eachTick, type Pacer } from './pacer';

export interface Router {
  route(frame: string, users: readonly string[], exclude?: Session): void;
  /** the same, for the users' connections on other instances only */
  routeRemote(frame: string, users: readonly string[]): void;
  /** sends what is queued, waits for its acks (bounded by forwardTimeoutMs), closes the links */
  close(): Promise<void>;
}

export interface RouterDeps {
  registry: ConnectionRegistry;
  discovery: Pick<Discovery, 'lookup' | 'reportFailedDelivery'>;
  instanceId: string;
  internalToken: string;
  forwardTimeoutMs: number;
  log: Logger;
  metrics?: RouterMetrics;
  /** when queued frames go out to the peers (default: the next tick) */
  pacer?: Pacer;
}

const FAILURE_LOG_INTERVAL_MS = 10_000;
/** unacked batches per peer */
const PEER_WINDOW = 4;
/** frames waiting for one peer before the oldest are given up (recipients sync) */
const MAX_QUEUED_FRAMES_PER_PEER = 100_000;
/** frames in one batch */
const MAX_FRAMES_PER_REQUEST = 5_000;
/** characters in one batch, roughly; the receiver takes messages up to PEER_LINK_MAX_PAYLOAD_BYTES (64 MiB), room enough for JSON escaping */
const MAX_BATCH_CHARS = 8 * 1024 * 1024;
/** how often links to peers that went away (closed, nothing pending) are forgotten */
const IDLE_SWEEP_MS = 60_000;

export function createRouter(deps: RouterDeps): Router {
  const log = deps.log.child({ component: 'router' });
  // A dead peer fails every tick until its lease lapses: one warn per interval, the rest at debug.
  const failureLog = createLogThrottle(FAILURE_LOG_INTERVAL_MS);
  /** by instance id and URL: a restarted peer under the same id and URL gets the same link (and its pause) */
  const links = new Map<string, PeerLink>();
  const toFlush = new Set<PeerLink>();
  let isClosed = false;
  let closing: Promise<void> | undefined;

  const sweeper = setInterval(() => {
    for (const [key, link] of links) if (link.isIdle()) links.delete(key);
  }, IDLE_SWEEP_MS);
  sweeper.unref();

  function failed(peer: InstanceRef, items: PeerLinkItem[], err: Error): void {
    const users = new Set<string>();
    for (const item of items) for (const u of item.users) users.add(u);
    const detail = { peer: peer.instanceId, url: peer.url, frames: items.length, err: errorMessage(err) };
    if (failureLog.shouldLog()) log.warn({ ...detail, failuresSoFar: failureLog.count }, 'forward to peer instance failed; recipients catch up by sync');
    else log.debug(detail, 'forward to peer instance failed');
    deps.discovery.reportFailedDelivery(peer.instanceId, [...users]);
  }

  function linkTo(key: string, ref: InstanceRef): PeerLink {
    let link = links.get(key);
    if (!link) {
      const peer = { instanceId: ref.instanceId, url: ref.url };
      link = createPeerLink({
        url: ref.url,
        token: deps.internalToken,
        timeoutMs: deps.forwardTimeoutMs,
        window: PEER_WINDOW,
        maxQueuedFrames: MAX_QUEUED_FRAMES_PER_PEER,
        maxFramesPerBatch: MAX_FRAMES_PER_REQUEST,
        maxBatchChars: MAX_BATCH_CHARS,
        onBatch: (frames, seconds, ok) => deps.metrics?.forwarded(frames, seconds, ok),
        onFailed: (items, err) => failed(peer, items, err),
        log: log.child({ peer: ref.instanceId }),
      });
      links.set(key, link);
    }
    return link;
  }

  const scheduleFlush = (deps.pacer ?? eachTick)(flush);

  function flush(): void {
    const batch = [...toFlush];
    toFlush.clear();
    for (const link of batch) link.flush();
  }

  function routeRemote(frame: string, users: readonly string[]): void {
    deps.discovery.lookup(users).then(
      (where) => {
        // One item per peer for this frame, listing that peer's recipients (keyed as `links`).
        const byPeer = new Map<string, { ref: InstanceRef; users: string[] }>();
        for (const u of users) {
          for (const ref of where.get(u) ?? []) {
            if (ref.instanceId === deps.instanceId) continue;
            const key = `${ref.instanceId} ${ref.url}`;
            let entry = byPeer.get(key);
            if (!entry) byPeer.set(key, (entry = { ref, users: [] }));
            entry.users.push(u);
          }
        }
        if (byPeer.size === 0) return;
        if (isClosed) {
          for (const { ref, users: list } of byPeer.values()) failed(ref, [{ users: list, frame }], new Error('instance shutting down'));
          return;
        }
        for (const [key, { ref, users: list }] of byPeer) {
          const link = linkTo(key, ref);
          link.push({ users: list, frame });
          toFlush.add(link);
        }
        scheduleFlush();
      },
      () => {
        // SvDiscover is down (already logged): remote recipients catch up by sync.
      },
    );
  }

  return {
    route(frame, users, exclude) {
      deps.registry.deliver(users, frame, exclude);
      routeRemote(frame, users);
    },
    routeRemote,
    close() {
      closing ??= (async () => {
        isClosed = true;
        clearInterval(sweeper);
        flush();
        await Promise.all([...links.values()].map((link) => link.close()));
        links.clear();
      })();
      return closing;
    },
  };
}
