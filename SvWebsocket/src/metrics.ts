/**
 * SvWebsocket's series. Components see only the narrow interface they need
 * (GatewayMetrics, RouterMetrics, ...); this file maps them onto prom-client.
 * The hot path does plain additions (FastCounter) and, for timed work, one
 * bucket scan (FastHistogram); prom-client reads them at scrape time.
 */
import type { PresenceMetrics } from './presence';
import { CloseCode, ErrorCode, LATENCY_BUCKETS_S, BATCH_BUCKETS, type Metrics, type FastCounter } from '@simplechat/shared';

/** Why an upgrade or a register was refused. */
export type RefusalReason = 'not_found' | 'draining' | 'origin' | 'ip_limit' | 'user_limit' | 'unauthorized' | 'register_timeout';

export interface FrameMetrics {
  /** a serialised server frame written to a socket (its type is read from the `{"type":"…"` prefix) */
  frameSent(frame: string): void;
}

export interface GatewayMetrics extends FrameMetrics {
  connectionOpened(): void;
  connectionClosed(): void;
  connectionRefused(reason: RefusalReason): void;
  /** the server closed a connection with this code */
  serverClosed(code: number): void;
  /** a client frame by its type, or 'invalid' / 'binary' */
  frameReceived(type: string): void;
  errorSent(code: string): void;
  rateLimited(): void;
  /** a send shed because too many sends were in progress on this instance */
  overloaded(): void;
  /** send received -> ack written */
  acked(seconds: number): void;
}

export interface RouterMetrics {
  /** one batch to a peer over the peer link: how many frames, how long until its ack (or the failure), whether it was acked */
  forwarded(frames: number, seconds: number, ok: boolean): void;
}

export interface PeerLinkMetrics {
  /** one batch received from a peer over the peer link and handed to local connections */
  peerBatchReceived(frames: number): void;
}

export interface DiscoveryMetrics {
  /** users whose instances the router needed (one call per routed message) */
  lookups(users: number): void;
  /** of those, answered from a local cache without asking SvDiscover */
  cacheHits(users: number): void;
  /** cached answers renewed in the background before they lapsed */
  renewed(users: number): void;
  /** one lookup request sent to SvDiscover, asking for this many users */
  asked(users: number): void;
  /** a change notification dropped cached answers: of these users, of one instance, or all of them */
  invalidated(scope: InvalidationScope, count: number): void;
  /** whether SvDiscover's change notifications are being received */
  changesSubscribed(isSubscribed: boolean): void;
}

export type InvalidationScope = 'user' | 'instance' | 'all';

export type PublishFailure = 'nack' | 'timeout' | 'not_connected' | 'error';

export interface PublisherMetrics {
  /** one AMQP publish (a batch of messages) confirmed by the broker */
  confirmed(messages: number, seconds: number): void;
  failed(reason: PublishFailure, messages: number): void;
}

export interface WsMetrics extends GatewayMetrics, RouterMetrics, PeerLinkMetrics, DiscoveryMetrics, PublisherMetrics, PresenceMetrics {
  /** counts since the previous call, for the periodic summary log line */
  takeSummary(): { opened: number; closed: number; refused: number; acks: number; forwardFailures: number; publishFailures: number };
}

const SERVER_FRAME_TYPES = ['message', 'ack', 'sync.hint', 'error', 'registered', 'history', 'sync', 'refreshed', 'room.info', 'room.left', 'room.event', 'rooms', 'room.marks', 'presence', 'typing', 'receipt', 'conversations', 'muted'] as const;
type ServerFrameType = (typeof SERVER_FRAME_TYPES)[number];

const TYPE_AT = '{"type":"'.length;
const QUOTE = 34;
/** first character, last character and length of each server frame type: no two types share all three */
const typeKey = (first: number, last: number, length: number) => (first * 128 + last) * 64 + length;
const TYPE_KEYS = new Map(SERVER_FRAME_TYPES.map((t) => [typeKey(t.charCodeAt(0), t.charCodeAt(t.length - 1), t.length), t]));
if (TYPE_KEYS.size !== SERVER_FRAME_TYPES.length) throw new Error('server frame types must differ in first letter, last letter or length');

/**
 * The type of a serialised server frame (every frame is serialised with
 * `type` first), told apart by the first and last letters and the length of
 * the type: four character reads and one short indexOf, measured several times
 * cheaper than even one startsWith per candidate type.
 */
export function serverFrameType(frame: string): ServerFrameType | undefined {
  if (frame.charCodeAt(0) !== 123 || frame.charCodeAt(TYPE_AT - 1) !== QUOTE) return undefined;
  const end = frame.indexOf('"', TYPE_AT);
  return end <= TYPE_AT ? undefined : TYPE_KEYS.get(typeKey(frame.charCodeAt(TYPE_AT), frame.charCodeAt(end - 1), end - TYPE_AT));
}

const CLIENT_FRAME_TYPES = ['send', 'register', 'history', 'sync', 'refresh', 'room.create', 'room.add', 'room.remove', 'room.leave', 'room.get', 'room.list', 'room.marks', 'presence.watch', 'presence.unwatch', 'typing', 'receipt', 'conversations', 'mute', 'invalid', 'binary'] as const;
const REFUSAL_REASONS: readonly RefusalReason[] = ['not_found', 'draining', 'origin', 'ip_limit', 'user_limit', 'unauthorized', 'register_timeout'];
const PUBLISH_FAILURES: readonly PublishFailure[] = ['nack', 'timeout', 'not_connected', 'error'];
const INVALIDATION_SCOPES: readonly InvalidationScope[] = ['user', 'instance', 'all'];

export interface WsMetricsSources {
  /** registered connections and all open sockets */
  connections(): { connections: number; sockets: number };
  users(): number;
  dependencies(): Record<string, boolean>;
}

export function createWsMetrics(metrics: Metrics, sources: WsMetricsSources): WsMetrics {
  metrics.dependencies(sources.dependencies);
  metrics.gauge('connections_open', 'Registered client connections on this instance.', [], function () {
    this.set(sources.connections().connections);
  });
  metrics.gauge('sockets_open', 'Open WebSockets on this instance, registered or not yet.', [], function () {
    this.set(sources.connections().sockets);
  });
  metrics.gauge('users_connected', 'Distinct users with at least one connection on this instance.', [], function () {
    this.set(sources.users());
  });

  // Everything a message touches is a FastCounter/FastHistogram: plain additions, read at scrape time.
  const opened = metrics.fastCounter('connections_opened_total', 'WebSocket upgrades accepted.');
  const closed = metrics.fastCounter('connections_closed_total', 'WebSockets closed, by either side.');
  const refusedBy = metrics.fastCounters('connections_refused_total', 'Upgrades or registers refused, by reason.', 'reason', REFUSAL_REASONS);
  const closeCodes = Object.values(CloseCode).map(String);
  const serverClosesBy: Record<string, FastCounter> = metrics.fastCounters(
    'server_closes_total',
    'Connections the server closed, by close code (1001 shutdown, 1008 bad frames, 1013 slow client, 4401 token, 4408 register timeout, 4429 connection limit).',
    'code',
    [...closeCodes, 'other'],
  );
  const framesInBy: Record<string, FastCounter> = metrics.fastCounters('frames_in_total', 'Client frames received, by type (invalid: not a valid frame; binary: refused).', 'type', [...CLIENT_FRAME_TYPES, 'other']);
  const framesOutBy = metrics.fastCounters('frames_out_total', 'Frames written to client sockets, by type.', 'type', [...SERVER_FRAME_TYPES, 'other']);
  const errorsBy: Record<string, FastCounter> = metrics.fastCounters('errors_sent_total', 'error frames sent to clients, by code.', 'code', Object.values(ErrorCode));
  const rateLimited = metrics.fastCounter('sends_rate_limited_total', 'send frames refused with rate_limited.');
  const overloaded = metrics.fastCounter('sends_shed_total', 'send frames answered rate_limited because MAX_PENDING_SENDS sends were in progress on this instance.');
  const acks = metrics.fastCounter('acks_total', 'Messages acked to their sender (stored durably by the broker).');
  const ackSeconds = metrics.fastHistogram('ack_latency_seconds', 'From a send frame received to its ack written: idempotency check, broker confirm.', LATENCY_BUCKETS_S);

  const forwards = metrics.fastCounters('forwards_total', 'Batches sent to peer instances over the peer link, by result (ok: acked; failed: recipients catch up by sync).', 'result', ['ok', 'failed']);
  const forwardFrames = metrics.fastCounter('forward_frames_total', 'Frames sent to peer instances (one frame can carry several recipients).');
  const forwardSeconds = metrics.fastHistogram('forward_latency_seconds', 'From a batch handed to the peer link to its ack (or its failure).', LATENCY_BUCKETS_S);
  const forwardBatch = metrics.fastHistogram('forward_batch_frames', 'Frames per forward (everything for one peer within one tick).', BATCH_BUCKETS);
  const peerBatches = metrics.fastCounter('peer_link_batches_received_total', 'Batches received from peer instances over the peer link.');
  const peerFrames = metrics.fastCounter('peer_link_frames_received_total', 'Frames received from peer instances over the peer link, for users connected here.');

  const lookups = metrics.fastCounter('discovery_lookups_total', 'Users whose instances were looked up to route a message.');
  const cacheHits = metrics.fastCounter('discovery_cache_hits_total', 'Lookups answered from the local cache without asking SvDiscover.');
  const lookupRequests = metrics.fastCounter('discovery_requests_total', 'Lookup requests sent to SvDiscover (each asks for the users of one tick, at most 10,000).');
  const lookupUsersAsked = metrics.fastCounter('discovery_users_asked_total', 'Users asked for in lookup requests to SvDiscover (cache misses and background renewals).');
  const renewals = metrics.fastCounter('discovery_cache_renewals_total', 'Cached lookup answers renewed in the background before they lapsed (answers in use near the end of their time in the cache).');
  const invalidations = metrics.fastCounters(
    'discovery_invalidations_total',
    'Cached lookup answers dropped by SvDiscover change notifications, by scope (user: users named; instance: notifications naming an instance; all: whole cache emptied on (re)subscribing, losing the subscription or an unreadable notification).',
    'scope',
    INVALIDATION_SCOPES,
  );
  const changesSubscribed = metrics.gauge('discovery_changes_subscribed', 'Whether SvDiscover change notifications are received (1: lookup answers live DISCOVERY_CACHE_SUBSCRIBED_MS) or not (0: DISCOVERY_CACHE_MS).');

  const confirmedBatches = metrics.fastCounter('publish_confirms_total', 'AMQP publishes (each a batch of messages) confirmed by the broker.');
  const confirmedMessages = metrics.fastCounter('published_messages_total', 'Messages confirmed by the broker.');
  const confirmSeconds = metrics.fastHistogram('publish_confirm_latency_seconds', 'From an AMQP publish to the broker confirm.', LATENCY_BUCKETS_S);
  const publishFailed = metrics.fastCounters('publish_failures_total', 'Messages not confirmed, by reason (nack, timeout, not_connected, error); their senders got unavailable.', 'reason', PUBLISH_FAILURES);

  const presenceChecked = metrics.fastCounter('presence_checks_total', 'Watched users asked about at SvDiscover (after a change notification, and by the periodic reconciliation).');
  const presenceChanges = metrics.fastCounter('presence_changes_total', 'Presence changes pushed to watching connections.');
  const presenceFrames = metrics.fastCounter('presence_frames_total', 'presence frames pushed to watching connections (each carries every change of one flush).');

  // The periodic log line reports differences of the same counters.
  const counted = () => ({
    opened: opened.value,
    closed: closed.value,
    refused: REFUSAL_REASONS.reduce((n, r) => n + refusedBy[r].value, 0),
    acks: acks.value,
    forwardFailures: forwards.failed.value,
    publishFailures: PUBLISH_FAILURES.reduce((n, r) => n + publishFailed[r].value, 0),
  });
  let reported = counted();

  return {
    connectionOpened: () => opened.inc(),
    connectionClosed: () => closed.inc(),
    connectionRefused: (reason) => refusedBy[reason].inc(),
    serverClosed(code) {
      (serverClosesBy[code] ?? serverClosesBy.other)?.inc();
    },
    frameReceived(type) {
      (framesInBy[type] ?? framesInBy.other)?.inc();
    },
    frameSent(frame) {
      framesOutBy[serverFrameType(frame) ?? 'other'].inc();
    },
    errorSent(code) {
      errorsBy[code]?.inc();
    },
    rateLimited: () => rateLimited.inc(),
    overloaded: () => overloaded.inc(),
    acked(seconds) {
      acks.inc();
      ackSeconds.observe(seconds);
    },
    forwarded(frames, seconds, ok) {
      (ok ? forwards.ok : forwards.failed).inc();
      forwardFrames.inc(frames);
      forwardSeconds.observe(seconds);
      forwardBatch.observe(frames);
    },
    peerBatchReceived(frames) {
      peerBatches.inc();
      peerFrames.inc(frames);
    },
    lookups: (users) => lookups.inc(users),
    asked(users) {
      lookupRequests.inc();
      lookupUsersAsked.inc(users);
    },
    cacheHits: (users) => cacheHits.inc(users),
    renewed: (users) => renewals.inc(users),
    invalidated: (scope, count) => invalidations[scope].inc(count),
    changesSubscribed: (isSubscribed) => changesSubscribed.set(isSubscribed ? 1 : 0),
    confirmed(messages, seconds) {
      confirmedBatches.inc();
      confirmedMessages.inc(messages);
      confirmSeconds.observe(seconds);
    },
    failed: (reason, messages) => publishFailed[reason].inc(messages),
    presenceChecked: (users) => presenceChecked.inc(users),
    presencePushed(changes, frames) {
      presenceChanges.inc(changes);
      presenceFrames.inc(frames);
    },
    takeSummary() {
      const now = counted();
      const out = {
        opened: now.opened - reported.opened,
        closed: now.closed - reported.closed,
        refused: now.refused - reported.refused,
        acks: now.acks - reported.acks,
        forwardFailures: now.forwardFailures - reported.forwardFailures,
        publishFailures: now.publishFailures - reported.publishFailures,
      };
      reported = now;
      return out;
    },
  };
}
