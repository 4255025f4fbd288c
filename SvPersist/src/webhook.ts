/**
 * Posts notification events to NOTIFY_WEBHOOK_URL. Consumes the notify queue
 * with manual acks, several events in flight; each delivery is one POST of its
 * body, signed per attempt (SimpleChat-Signature), with a 10 s deadline.
 *
 * - 2xx: acked.
 * - 410 Gone: published to the notify dead-letter queue (confirmed), then acked.
 * - anything else, or no answer: published to the delay queue of its next
 *   backoff step (confirmed), then acked; the broker brings it back when the
 *   delay is over. An event whose next attempt would start more than 24 h after
 *   its first is dead-lettered instead (exhausted).
 *
 * Until the publish is confirmed the delivery stays unacked: a crash at any
 * point makes the broker deliver it again, under the same eventId. Headers
 * carry the failed attempts so far and the first attempt's time.
 */
import type { Channel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import { Pool } from 'undici';
import {
  createAmqpConnection,
  createLogThrottle,
  errorMessage,
  signWebhook,
  UnavailableError,
  WEBHOOK_EVENT_ID_HEADER,
  WEBHOOK_SIGNATURE_HEADER,
  type AmqpSession,
  type Logger,
} from '@simplechat/shared';
import { assertNotifyTopology, retryDelayMs, type NotifyTopology } from './notify-topology';
import type { NotifyDeadLetterReason, NotifyMetrics } from './metrics';

/** Headers of an event in the broker. */
export const NotifyHeader = {
  /** failed attempts so far (absent before the first) */
  ATTEMPT: 'x-attempt',
  /** ms since the epoch of the first attempt */
  FIRST_ATTEMPT_MS: 'x-first-attempt-ms',
  /** ack ts + NOTIFY_AFTER_MS of the event's earliest message */
  MISSED_AT_MS: 'x-missed-at-ms',
  /** what the last attempt got: "HTTP 503", "timeout", "ECONNREFUSED" */
  LAST_RESULT: 'x-last-result',
  /** on dead letters: gone or exhausted */
  REASON: 'x-reason',
  /** on dead letters: attempts made */
  ATTEMPTS: 'x-attempts',
  /** put back from the dead-letter queue (notify-replay.ts): its next attempt is not a first one */
  REPLAYED: 'x-replayed',
} as const;

const DEFAULT_PREFETCH = 20;
const DEFAULT_TIMEOUT_MS = 10_000;
const WARN_EVERY_MS = 60_000;
const USER_AGENT = 'SimpleChat-Webhook/1';

export interface WebhookDeps {
  /** the broker's nodes (AMQP_URLS), or one URL */
  amqpUrl: string | readonly string[];
  /** the broker's notify queues differ from this version's (QUEUE_TYPE): the service stops */
  onFatal?(err: Error): void;
  topology: NotifyTopology;
  /** NOTIFY_WEBHOOK_URL */
  url: string;
  /** NOTIFY_WEBHOOK_SECRET */
  secret: string;
  log: Logger;
  metrics: NotifyMetrics;
  /** events in flight at once (default 20) */
  prefetch?: number;
  /** deadline of one POST (default 10 s) */
  timeoutMs?: number;
  now?: () => number;
}

export interface WebhookSender {
  isConnected(): boolean;
  /** Resolves once consuming. */
  ready(): Promise<void>;
  close(): Promise<void>;
}

interface Session {
  link: AmqpSession;
  channel: Channel;
  confirm: ConfirmChannel;
  consumerTag?: string;
  isOpen: boolean;
}

/** The outcome of one POST: an HTTP status, or why there was none. */
type Attempt = { status: number } | { error: string };

export function createWebhookSender(deps: WebhookDeps): WebhookSender {
  const log = deps.log.child({ component: 'webhook' });
  const clock = deps.now ?? Date.now;
  const timeoutMs = deps.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  // The URL may carry a token in its path or query: logs name its origin only.
  const url = new URL(deps.url);
  const target = url.origin;
  const path = `${url.pathname}${url.search}`;
  // keep-alive connections to the receiver, one per event in flight
  const pool = new Pool(target, { connections: deps.prefetch ?? DEFAULT_PREFETCH, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  const { topology } = deps;
  const failing = createLogThrottle(WARN_EVERY_MS);
  let current: Session | undefined;
  let isClosed = false;
  const inFlight = new Set<Promise<void>>();
  const aborts = new Set<AbortController>();

  async function consume(link: AmqpSession): Promise<void> {
    const channel = await link.createChannel({ label: 'notify' });
    const confirm = await link.createConfirmChannel({ label: 'notify retry' });
    await assertNotifyTopology(channel, topology);
    await channel.prefetch(deps.prefetch ?? DEFAULT_PREFETCH);
    if (isClosed || link.isLost) throw new Error('closed while connecting');
    const session: Session = { link, channel, confirm, isOpen: true };
    current = session;
    const { consumerTag } = await channel.consume(topology.queue, (msg) => onDelivery(session, msg), { noAck: false });
    session.consumerTag = consumerTag;
  }

  function onDelivery(session: Session, msg: ConsumeMessage | null): void {
    if (msg === null) {
      if (!isClosed) log.warn({ queue: topology.queue }, 'the broker cancelled the consumer; reconnecting');
      session.link.lose();
      return;
    }
    const work = handle(session, msg).catch((err: unknown) => {
      // Left unacked: a new connection gets it again.
      if (!isClosed) log.warn({ err: errorMessage(err) }, 'could not move a notification on; it will be delivered again');
      session.link.lose();
    });
    inFlight.add(work);
    void work.finally(() => inFlight.delete(work));
  }

  async function post(msg: ConsumeMessage, eventId: string): Promise<Attempt | undefined> {
    const controller = new AbortController();
    aborts.add(controller);
    const timer = setTimeout(() => controller.abort(new UnavailableError('timeout')), timeoutMs);
    try {
      const signature = await signWebhook(deps.secret, msg.content, Math.floor(clock() / 1000));
      // undici follows no redirect unless told: a 3xx is a failed attempt
      const res = await pool.request({
        path,
        method: 'POST',
        body: msg.content,
        headers: { 'content-type': 'application/json', 'user-agent': USER_AGENT, [WEBHOOK_EVENT_ID_HEADER]: eventId, [WEBHOOK_SIGNATURE_HEADER]: signature },
        signal: controller.signal,
      });
      await res.body.dump().catch(() => undefined);
      return { status: res.statusCode };
    } catch (err) {
      if (isClosed) return undefined;
      if (controller.signal.aborted) return { error: 'timeout' };
      const code = (err as { code?: unknown }).code;
      return { error: typeof code === 'string' ? code : errorMessage(err) };
    } finally {
      clearTimeout(timer);
      aborts.delete(controller);
    }
  }

  async function handle(session: Session, msg: ConsumeMessage): Promise<void> {
    const eventId = typeof msg.properties.messageId === 'string' ? msg.properties.messageId : '';
    const headers = (msg.properties.headers ?? {}) as Record<string, unknown>;
    const failedBefore = Number(headers[NotifyHeader.ATTEMPT] ?? 0) || 0;
    const started = clock();
    const firstMs = failedBefore === 0 ? started : Number(headers[NotifyHeader.FIRST_ATTEMPT_MS]) || started;
    const missedAtMs = Number(headers[NotifyHeader.MISSED_AT_MS]) || undefined;
    // Neither a redelivery nor a replayed dead letter is a first attempt.
    if (failedBefore === 0 && !msg.fields.redelivered && headers[NotifyHeader.REPLAYED] === undefined && missedAtMs !== undefined) deps.metrics.firstAttempt((started - missedAtMs) / 1000);
    const attempt = await post(msg, eventId);
    if (!attempt) return; // closing: left unacked, delivered again
    const result = 'status' in attempt ? `HTTP ${attempt.status}` : attempt.error;
    const carried = { ...(missedAtMs !== undefined ? { [NotifyHeader.MISSED_AT_MS]: missedAtMs } : {}), [NotifyHeader.FIRST_ATTEMPT_MS]: firstMs, [NotifyHeader.LAST_RESULT]: result };

    if ('status' in attempt && attempt.status >= 200 && attempt.status < 300) {
      ack(session, msg);
      deps.metrics.sent();
      const streak = failing.end();
      if (streak > 0) log.info({ target, failedAttempts: streak }, 'the notification webhook answers again');
      log.debug({ eventId, attempts: failedBefore + 1 }, 'notification delivered');
      return;
    }
    const failed = failedBefore + 1;
    if ('status' in attempt && attempt.status === 410) {
      await deadLetter(session, msg, 'gone', { ...carried, [NotifyHeader.ATTEMPTS]: failed });
      log.warn({ target, eventId }, 'the notification webhook answered 410 Gone; event dead-lettered');
      return;
    }
    const delayMs = retryDelayMs(topology.schedule, failed);
    if (clock() + delayMs - firstMs > topology.schedule.giveUpAfterMs) {
      await deadLetter(session, msg, 'exhausted', { ...carried, [NotifyHeader.ATTEMPTS]: failed });
      log.warn({ target, eventId, attempts: failed, lastResult: result }, 'notification retried for its whole retry period without success; event dead-lettered');
      return;
    }
    await publish(session, topology.delayQueues.get(delayMs) as string, msg, { ...carried, [NotifyHeader.ATTEMPT]: failed });
    ack(session, msg);
    deps.metrics.retried();
    if (failing.shouldLog()) log.warn({ target, result, retryInMs: delayMs }, 'the notification webhook failed; retrying through the broker');
    else log.debug({ eventId, result, attempt: failed, retryInMs: delayMs }, 'notification attempt failed; retrying');
  }

  async function deadLetter(session: Session, msg: ConsumeMessage, reason: NotifyDeadLetterReason, headers: Record<string, unknown>): Promise<void> {
    await publish(session, topology.deadLetterQueue, msg, { ...headers, [NotifyHeader.REASON]: reason });
    ack(session, msg);
    deps.metrics.deadLettered(reason);
  }

  /** Resolves once the broker confirmed; the delivery is acked only after that. */
  function publish(session: Session, queue: string, msg: ConsumeMessage, headers: Record<string, unknown>): Promise<void> {
    if (!session.isOpen) return Promise.reject(new UnavailableError('the broker connection closed'));
    const { messageId, contentType } = msg.properties;
    return new Promise<void>((resolve, reject) => {
      try {
        session.confirm.sendToQueue(queue, msg.content, { persistent: true, messageId, contentType, headers }, (err: unknown) =>
          err ? reject(new UnavailableError(`the broker refused a publish to ${queue}`)) : resolve(),
        );
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  /** On the channel the delivery came from: another channel's tags mean other deliveries. */
  function ack(session: Session, msg: ConsumeMessage): void {
    if (!session.isOpen) return;
    try {
      session.channel.ack(msg);
    } catch (err) {
      log.debug({ err: errorMessage(err) }, 'ack on a closed channel skipped; the event comes again');
    }
  }

  function drop(link: AmqpSession): void {
    if (current?.link !== link) return;
    current.isOpen = false;
    current = undefined;
  }

  /** close(): no new deliveries; POSTs under way are abandoned (their events stay unacked and come again). */
  async function drain(): Promise<void> {
    const session = current;
    if (session?.isOpen && session.consumerTag) await session.channel.cancel(session.consumerTag).catch(() => undefined);
    for (const c of aborts) c.abort(new UnavailableError('closing'));
    await Promise.all([...inFlight]);
  }

  const broker = createAmqpConnection({
    url: deps.amqpUrl,
    onFatal: deps.onFatal,
    name: `SvPersist ${topology.queue} webhook`,
    log,
    setup: consume,
    onLost: drop,
    drain,
    purpose: 'posting notifications',
    logFields: { queue: topology.queue, target },
  });

  return {
    isConnected: () => current?.isOpen === true,
    ready: () => broker.ready(),
    async close() {
      isClosed = true;
      await broker.close();
      await pool.destroy().catch(() => undefined);
    },
  };
}
