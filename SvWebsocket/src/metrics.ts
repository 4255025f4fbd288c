/**
 * SvWebsocket's series. Components see only the narrow interface they need
 * (GatewayMetrics, RouterMetrics, ...); this file maps them onto prom-client.
 * Label values are bound once up front, so the hot path does counter
 * increments and, for timed work, one histogram observation, nothing else.
 */
import { CloseCode, ErrorCode, LATENCY_BUCKETS_S, BATCH_BUCKETS, type Metrics, type Counter } from '@simplechat/shared';

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
  /** send received -> ack written */
  acked(seconds: number): void;
}

export interface RouterMetrics {
  /** one POST /internal/deliver to a peer: how many frames, how long, whether it was accepted */
  forwarded(frames: number, seconds: number, ok: boolean): void;
}

export interface DiscoveryMetrics {
  /** users whose instances the router needed (one call per routed message) */
  lookups(users: number): void;
  /** of those, answered from a local cache without asking SvDiscover */
  cacheHits(users: number): void;
}

export type PublishFailure = 'nack' | 'timeout' | 'not_connected' | 'error';

export interface PublisherMetrics {
  /** one AMQP publish (a batch of messages) confirmed by the broker */
  confirmed(messages: number, seconds: number): void;
  failed(reason: PublishFailure, messages: number): void;
}

export interface WsMetrics extends GatewayMetrics, RouterMetrics, DiscoveryMetrics, PublisherMetrics {
  /** counts since the previous call, for the periodic summary log line */
  takeSummary(): { opened: number; closed: number; refused: number; acks: number; forwardFailures: number; publishFailures: number };
}

const SERVER_FRAME_TYPES = ['message', 'ack', 'sync.hint', 'error', 'registered', 'history', 'sync', 'refreshed'] as const;
const CLIENT_FRAME_TYPES = ['send', 'register', 'history', 'sync', 'refresh', 'invalid', 'binary'] as const;
const REFUSAL_REASONS: readonly RefusalReason[] = ['not_found', 'draining', 'origin', 'ip_limit', 'user_limit', 'unauthorized', 'register_timeout'];
const PUBLISH_FAILURES: readonly PublishFailure[] = ['nack', 'timeout', 'not_connected', 'error'];

/** Children bound to each known label value: an increment then skips hashing the labels. */
function bind(counter: Counter<string>, values: readonly string[]): Map<string, Counter.Internal> {
  const out = new Map<string, Counter.Internal>();
  for (const v of values) out.set(v, counter.labels(v));
  return out;
}

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

  const opened = metrics.counter('connections_opened_total', 'WebSocket upgrades accepted.');
  const closed = metrics.counter('connections_closed_total', 'WebSockets closed, by either side.');
  const refusedBy = bind(metrics.counter('connections_refused_total', 'Upgrades or registers refused, by reason.', ['reason']), REFUSAL_REASONS);
  const knownCloseCodes = Object.values(CloseCode).map(String);
  const serverCloses = metrics.counter('server_closes_total', 'Connections the server closed, by close code (1001 shutdown, 1008 bad frames, 1013 slow client, 4401 token, 4408 register timeout, 4429 connection limit).', ['code']);
  const serverClosesBy = bind(serverCloses, knownCloseCodes);
  const framesIn = metrics.counter('frames_in_total', 'Client frames received, by type (invalid: not a valid frame; binary: refused).', ['type']);
  const framesInBy = bind(framesIn, CLIENT_FRAME_TYPES);
  const framesOut = metrics.counter('frames_out_total', 'Frames written to client sockets, by type.', ['type']);
  const framesOutBy = SERVER_FRAME_TYPES.map((t) => ({ prefix: `{"type":"${t}"`, child: framesOut.labels({ type: t }) }));
  const framesOutOther = framesOut.labels({ type: 'other' });
  const errorsBy = bind(metrics.counter('errors_sent_total', 'error frames sent to clients, by code.', ['code']), Object.values(ErrorCode));
  const rateLimited = metrics.counter('sends_rate_limited_total', 'send frames refused with rate_limited.');
  const acks = metrics.counter('acks_total', 'Messages acked to their sender (stored durably by the broker).');
  const ackSeconds = metrics.histogram('ack_latency_seconds', 'From a send frame received to its ack written: idempotency check, broker confirm.', LATENCY_BUCKETS_S);

  const forwardsOk = metrics.counter('forwards_total', 'POST /internal/deliver calls to peer instances, by result.', ['result']);
  const forwardOk = forwardsOk.labels({ result: 'ok' });
  const forwardFailed = forwardsOk.labels({ result: 'failed' });
  const forwardFrames = metrics.counter('forward_frames_total', 'Frames sent to peer instances (one frame can carry several recipients).');
  const forwardSeconds = metrics.histogram('forward_latency_seconds', 'Time of one forward to a peer instance, failures included.', LATENCY_BUCKETS_S);
  const forwardBatch = metrics.histogram('forward_batch_frames', 'Frames per forward (everything for one peer within one tick).', BATCH_BUCKETS);

  const lookups = metrics.counter('discovery_lookups_total', 'Users whose instances were looked up to route a message.');
  const cacheHits = metrics.counter('discovery_cache_hits_total', 'Lookups answered from the local cache without asking SvDiscover.');

  const confirmedBatches = metrics.counter('publish_confirms_total', 'AMQP publishes (each a batch of messages) confirmed by the broker.');
  const confirmedMessages = metrics.counter('published_messages_total', 'Messages confirmed by the broker.');
  const confirmSeconds = metrics.histogram('publish_confirm_latency_seconds', 'From an AMQP publish to the broker confirm.', LATENCY_BUCKETS_S);
  const publishFailed = bind(metrics.counter('publish_failures_total', 'Messages not confirmed, by reason (nack, timeout, not_connected, error); their senders got unavailable.', ['reason']), PUBLISH_FAILURES);

  const summary = { opened: 0, closed: 0, refused: 0, acks: 0, forwardFailures: 0, publishFailures: 0 };

  return {
    connectionOpened() {
      opened.inc();
      summary.opened++;
    },
    connectionClosed() {
      closed.inc();
      summary.closed++;
    },
    connectionRefused(reason) {
      refusedBy.get(reason)?.inc();
      summary.refused++;
    },
    serverClosed(code) {
      const child = serverClosesBy.get(String(code));
      if (child) child.inc();
      else serverCloses.inc({ code: 'other' });
    },
    frameReceived(type) {
      const child = framesInBy.get(type);
      if (child) child.inc();
      else framesIn.inc({ type: 'other' });
    },
    frameSent(frame) {
      for (const t of framesOutBy) {
        if (frame.startsWith(t.prefix)) {
          t.child.inc();
          return;
        }
      }
      framesOutOther.inc();
    },
    errorSent(code) {
      errorsBy.get(code)?.inc();
    },
    rateLimited() {
      rateLimited.inc();
    },
    acked(seconds) {
      acks.inc();
      ackSeconds.observe(seconds);
      summary.acks++;
    },
    forwarded(frames, seconds, ok) {
      (ok ? forwardOk : forwardFailed).inc();
      if (!ok) summary.forwardFailures++;
      forwardFrames.inc(frames);
      forwardSeconds.observe(seconds);
      forwardBatch.observe(frames);
    },
    lookups(users) {
      lookups.inc(users);
    },
    cacheHits(users) {
      cacheHits.inc(users);
    },
    confirmed(messages, seconds) {
      confirmedBatches.inc();
      confirmedMessages.inc(messages);
      confirmSeconds.observe(seconds);
    },
    failed(reason, messages) {
      publishFailed.get(reason)?.inc(messages);
      summary.publishFailures += messages;
    },
    takeSummary() {
      const out = { ...summary };
      summary.opened = summary.closed = summary.refused = summary.acks = summary.forwardFailures = summary.publishFailures = 0;
      return out;
    },
  };
}
