/**
 * The broker side of notifications: an exchange and queue of events to post,
 * one delay queue per backoff step, and a dead-letter queue. A retry is a
 * publish to the delay queue of its step; the broker expires it there
 * (x-message-ttl) and dead-letters it back to the notify exchange, so a
 * waiting retry is a durable message, never a timer in a process.
 *
 * RabbitMQ 3.10 expires messages only at the head of a queue: one queue per
 * delay keeps every message in a queue behind ones that expire no later.
 */
import { DELIVERY_LIMIT, explainMismatch, type QueueType, type Topology, type TopologyChannel } from '@simplechat/shared';

/** Routing key of the notify queue; the delay queues dead-letter with it. */
export const NOTIFY_ROUTING_KEY = 'notify';

/** Backoff of the contract: after the n-th failed attempt, wait delaysMs[n-1] (the last one repeats). */
export interface RetrySchedule {
  delaysMs: readonly number[];
  /** no attempt starts later than this after the first one: the event is dead-lettered instead */
  giveUpAfterMs: number;
}

export const RETRY_SCHEDULE: RetrySchedule = {
  delaysMs: [1000, 5000, 30_000, 120_000, 600_000, 1_800_000],
  giveUpAfterMs: 24 * 3600_000,
};

export interface NotifyTopology {
  exchange: string;
  queue: string;
  deadLetterQueue: string;
  /** one per distinct delay of the schedule */
  delayQueues: ReadonlyMap<number, string>;
  schedule: RetrySchedule;
  /** QUEUE_TYPE */
  queueType: QueueType;
}

/** "1s", "30s", "2m", "250ms": a delay queue is named after its delay. */
function durationName(ms: number): string {
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

export function notifyTopology(prefix: string, schedule: RetrySchedule = RETRY_SCHEDULE, queueType: QueueType = 'quorum'): NotifyTopology {
  const base = `${prefix}notify`;
  return {
    exchange: base,
    queue: base,
    deadLetterQueue: `${base}.dead`,
    delayQueues: new Map(schedule.delaysMs.map((ms) => [ms, `${base}.delay.${durationName(ms)}`])),
    schedule,
    queueType,
  };
}

/** The delay after `failedAttempts` failed attempts (1 or more). */
export function retryDelayMs(schedule: RetrySchedule, failedAttempts: number): number {
  const { delaysMs } = schedule;
  return delaysMs[Math.min(failedAttempts, delaysMs.length) - 1] as number;
}

/** Removes every queue and the exchange of the topology (tests and benchmarks clean up with it). */
export async function deleteNotifyTopology(channel: { deleteQueue(queue: string): Promise<unknown>; deleteExchange(exchange: string): Promise<unknown> }, t: NotifyTopology): Promise<void> {
  for (const queue of [t.queue, t.deadLetterQueue, ...t.delayQueues.values()]) await channel.deleteQueue(queue);
  await channel.deleteExchange(t.exchange);
}

/**
 * Durable queues of QUEUE_TYPE. Quorum ones add, on each delay queue, `x-dead-letter-strategy:
 * at-least-once` with `x-overflow: reject-publish`: without them a quorum queue dead-letters at
 * most once, and an expired retry could be lost on its way back to the notify queue. The notify
 * queue itself gets a delivery limit, past which an event goes to the notify dead-letter queue
 * (through the default exchange) instead of coming back forever.
 *
 * Queue arguments cannot change once declared (the broker answers PRECONDITION_FAILED, which
 * stops the service with one line): moving the notify queues of a classic deployment to quorum
 * takes them empty and deleted first (docs/OPERATIONS.md#moving-from-the-classic-queue).
 */
export async function assertNotifyTopology(channel: TopologyChannel, t: NotifyTopology): Promise<void> {
  const quorum = t.queueType === 'quorum';
  const typed = (args: Record<string, unknown>) => (quorum ? { 'x-queue-type': 'quorum', ...args } : args);
  const atLeastOnce = quorum ? { 'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish' } : {};
  const declare = async (queue: string, args: Record<string, unknown>) => {
    try {
      await channel.assertQueue(queue, { durable: true, ...(Object.keys(args).length > 0 ? { arguments: args } : {}) });
    } catch (err) {
      throw explainMismatch(err, { queueType: t.queueType } as Topology) ?? err;
    }
  };
  await channel.assertExchange(t.exchange, 'direct', { durable: true });
  await declare(t.queue, typed(quorum ? { 'x-delivery-limit': DELIVERY_LIMIT, 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': t.deadLetterQueue, ...atLeastOnce } : {}));
  await channel.bindQueue(t.queue, t.exchange, NOTIFY_ROUTING_KEY);
  await declare(t.deadLetterQueue, typed({}));
  for (const [ms, queue] of t.delayQueues) {
    await declare(
      queue,
      typed({
        'x-message-ttl': ms,
        'x-dead-letter-exchange': t.exchange,
        'x-dead-letter-routing-key': NOTIFY_ROUTING_KEY,
        ...atLeastOnce,
      }),
    );
  }
}
