/**
 * A Redis connection of its own, subscribed to SvDiscover's change
 * notifications (discoveryChangesChannel) and to the echo of this instance's
 * heartbeats (discoveryBeatChannel). It counts as subscribed only once a
 * heartbeat has echoed back on the current connection: that proves the
 * notifications reach it (the same Redis and key prefix as SvDiscover, an
 * SvDiscover that publishes them, a live link). It stops counting as
 * subscribed when the connection drops, or when MAX_UNECHOED_BEATS answered
 * heartbeats in a row were not echoed (a link that died without the socket
 * noticing; the connection is then replaced). Notifications published while
 * not subscribed are gone for good, so the receiver is told of every start
 * and loss. node-redis reconnects with the options of the client it is
 * duplicated from and re-subscribes before it reports ready. On a Redis
 * Cluster the connection goes to one node, where the notifications of every
 * node arrive; one that gives up on its node (it died, and a replica took its
 * slots over) is replaced by one to another node.
 */
import {
  errorMessage,
  parseDiscoveryChange,
  discoveryChangesChannel,
  discoveryBeatChannel,
  type DiscoveryChange,
  type Logger,
  type Redis,
  type RedisClient,
} from '@simplechat/shared';

export interface ChangeSubscriberDeps {
  /** a connection of its own: a subscribed connection can run nothing but pub/sub commands */
  redis: Pick<Redis, 'subscriber'>;
  /** SvDiscover's KEY_PREFIX */
  keyPrefix: string;
  instanceId: string;
  log: Logger;
  /** a notification; undefined when it could not be read (the receiver should drop everything) */
  onChange(change: DiscoveryChange | undefined): void;
  /** the subscription (re)started: notifications may have been missed before this */
  onSubscribed(): void;
  /** the subscription stopped; notifications are missed until onSubscribed */
  onLost(reason: string): void;
}

export interface ChangeSubscriber {
  isSubscribed(): boolean;
  /** SvDiscover answered a heartbeat of this instance: its echo is on the way */
  heartbeatAnswered(): void;
  close(): Promise<void>;
}

type Client = RedisClient;

/** An echo can arrive just after the heartbeat's HTTP answer; a few in a row cannot all be late. */
export const MAX_UNECHOED_BEATS = 3;
/** A connection that gave up on its node is replaced after this long. */
const REOPEN_MS = 500;

export function createChangeSubscriber(deps: ChangeSubscriberDeps): ChangeSubscriber {
  const { log } = deps;
  const changesChannel = discoveryChangesChannel(deps.keyPrefix);
  const beatChannel = discoveryBeatChannel(deps.keyPrefix, deps.instanceId);
  let isListening = false;
  let hasEchoed = false;
  let unechoed = 0;
  let isSubscribed = false;
  let hasWarnedNoEcho = false;
  let isClosed = false;

  function lost(reason: string): void {
    isListening = false;
    if (!isSubscribed || isClosed) return;
    isSubscribed = false;
    deps.onLost(reason);
  }

  function onMessage(message: string, channel: string): void {
    if (channel === beatChannel) {
      unechoed = 0;
      hasEchoed = true;
      hasWarnedNoEcho = false;
      if (isListening && !isSubscribed && !isClosed) {
        isSubscribed = true;
        deps.onSubscribed();
      }
      return;
    }
    const change = parseDiscoveryChange(message);
    if (!change) log.debug({ message: message.slice(0, 200) }, 'unreadable discovery change notification; dropping every cached lookup');
    deps.onChange(change);
  }

  function open(): Client {
    const c = deps.redis.subscriber(`simplechat-changes-${deps.instanceId}`);
    // node-redis keeps a listener (and re-subscribes it on reconnect) only once SUBSCRIBE
    // was answered: until then, every ready subscribes again.
    let hasListener = false;
    const listening = () => {
      isListening = true;
      hasEchoed = false;
      unechoed = 0;
    };
    c.on('error', (err: unknown) => {
      if (c !== client) return;
      log.debug({ err: errorMessage(err) }, 'discovery change subscription: redis error');
      if (!c.isReady) lost(errorMessage(err));
      // It stopped reconnecting (its cluster node is gone): another connection, maybe to another node.
      if (!c.isOpen && !isClosed) {
        setTimeout(() => {
          if (c !== client || isClosed) return;
          client = open();
        }, REOPEN_MS).unref();
      }
    });
    c.on('ready', () => {
      if (c !== client) return;
      if (hasListener) {
        listening();
        return;
      }
      c.subscribe([changesChannel, beatChannel], onMessage).then(
        () => {
          hasListener = true;
          if (c === client && c.isReady) listening();
        },
        (err: unknown) => log.debug({ err: errorMessage(err) }, 'could not subscribe to discovery changes; retrying once reconnected'),
      );
    });
    // The reconnect strategy of the duplicated client decides the retries; failures reach 'error'.
    c.connect().catch(() => undefined);
    return c;
  }

  let client = open();

  let closing: Promise<void> | undefined;
  return {
    isSubscribed: () => isSubscribed,
    heartbeatAnswered() {
      if (!isListening || isClosed || ++unechoed < MAX_UNECHOED_BEATS) return;
      unechoed = 0;
      if (hasEchoed) {
        // It worked on this connection and went silent: replace the connection.
        lost(`${MAX_UNECHOED_BEATS} heartbeats in a row were not echoed`);
        const old = client;
        client = open();
        if (old.isOpen) old.destroy();
      } else if (!hasWarnedNoEcho) {
        hasWarnedNoEcho = true;
        log.warn(
          { channel: beatChannel },
          'heartbeats are not echoed on Redis pub/sub: REDIS_URL and KEY_PREFIX must be those of SvDiscover (or SvDiscover predates change notifications); lookup answers are reused for DISCOVERY_CACHE_MS only',
        );
      }
    },
    close() {
      closing ??= (async () => {
        isClosed = true;
        isSubscribed = false;
        // Nothing to finish: dropping the connection ends the subscription.
        if (client.isOpen) client.destroy();
      })();
      return closing;
    },
  };
}
