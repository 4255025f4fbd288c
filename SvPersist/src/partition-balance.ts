/**
 * Spreading the partitions over the SvPersist instances. Each partition's
 * queue has a single active consumer, and the broker makes the first one
 * attached active: left alone, the SvPersist that started first would store
 * every partition while the others only stand by.
 *
 * So each SvPersist also attaches a consumer to one queue that never holds a
 * message (`<prefix>persist.members`); its consumer count is the number of
 * SvPersist instances connected to the broker. Every BALANCE_MS, one active
 * on more partitions than its share (partitions / instances, rounded up)
 * steps back from the surplus: it cancels those consumers and attaches again,
 * at the back of each queue's line, so that an instance standing by takes
 * them over. Deliveries it holds are still stored and acked by it: handing
 * back a prefetched backlog made every handed-back delivery decoded twice and
 * cost a drain on one host a quarter more CPU per row (docs/PERFORMANCE.md).
 *
 * A partition is active here when a delivery came for it within
 * ACTIVE_WINDOW_MS. One stepped back from is left alone for
 * STEP_BACK_COOLDOWN_MS, so a partition that keeps coming back (nobody else
 * waits for it) does not churn.
 */
import type { Channel } from 'amqplib';
import { createAmqpConnection, errorMessage, type Logger, type Metrics, type QueueType } from '@simplechat/shared';
import type { Writer } from './writer';

export interface PartitionBalanceDeps {
  amqpUrl: string | readonly string[];
  /** Topology.membersQueue */
  membersQueue: string;
  /** QUEUE_TYPE: a quorum members queue outlives the loss of a node */
  queueType: QueueType;
  /** this instance's writers, by partition number */
  partitions: readonly Pick<Writer, 'deliveredSince' | 'stepBack'>[];
  log: Logger;
  metrics?: Metrics;
  /** how often the share is checked (default BALANCE_MS) */
  intervalMs?: number;
}

export interface PartitionBalance {
  close(): Promise<void>;
}

const BALANCE_MS = 1000;
const ACTIVE_WINDOW_MS = 5000;
const STEP_BACK_COOLDOWN_MS = 60_000;
/** an unused members queue goes away by itself after a day */
const MEMBERS_QUEUE_EXPIRES_MS = 24 * 3600_000;

export function createPartitionBalance(deps: PartitionBalanceDeps): PartitionBalance {
  const log = deps.log.child({ component: 'partition-balance' });
  const intervalMs = deps.intervalMs ?? BALANCE_MS;
  const steppedBackAt = new Map<number, number>();
  let channel: Channel | undefined;
  let balancing: Promise<void> | undefined;

  const stepBacks = deps.metrics?.counter('partition_step_backs_total', 'Partitions this SvPersist stepped back from because it was active on more than its share (another instance took them over).');
  deps.metrics?.gauge('partition_active', 'Whether this SvPersist stored a partition in the last 5 s (1) or stands by for it (0).', ['partition'], function () {
    const since = Date.now() - ACTIVE_WINDOW_MS;
    deps.partitions.forEach((w, p) => this.set({ partition: String(p) }, w.deliveredSince(since) ? 1 : 0));
  });

  if (deps.partitions.length < 2) return { close: async () => undefined };
  const broker = createAmqpConnection({
    url: deps.amqpUrl,
    name: `SvPersist ${deps.membersQueue}`,
    log,
    purpose: 'counting SvPersist instances',
    async setup(session) {
      const ch = await session.createChannel();
      await ch.assertQueue(deps.membersQueue, { durable: true, arguments: { 'x-queue-type': deps.queueType, 'x-expires': MEMBERS_QUEUE_EXPIRES_MS } });
      await ch.consume(deps.membersQueue, (msg) => {
        // Nothing is ever published there; a null is the broker cancelling the consumer.
        if (msg === null) session.lose();
      }, { noAck: true });
      channel = ch;
    },
    onLost() {
      channel = undefined;
    },
  });

  async function balance(): Promise<void> {
    const ch = channel;
    if (!ch) return;
    const instances = (await ch.checkQueue(deps.membersQueue)).consumerCount;
    if (instances < 2) return;
    const share = Math.ceil(deps.partitions.length / instances);
    const now = Date.now();
    const active = deps.partitions.flatMap((w, p) => (w.deliveredSince(now - ACTIVE_WINDOW_MS) ? [p] : []));
    if (active.length <= share) return;
    const movable = active.filter((p) => now - (steppedBackAt.get(p) ?? 0) > STEP_BACK_COOLDOWN_MS).reverse();
    const surplus = movable.slice(0, active.length - share);
    if (surplus.length === 0) return;
    log.info({ active, instances, share, steppingBack: surplus }, 'active on more partitions than this SvPersist\'s share; stepping back from the surplus for another instance to take');
    for (const p of surplus) steppedBackAt.set(p, now);
    await Promise.all(surplus.map((p) => deps.partitions[p]?.stepBack()));
    stepBacks?.inc(surplus.length);
  }

  const timer = setInterval(() => {
    balancing ??= balance()
      .catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'partition balance check failed; trying again later'))
      .finally(() => (balancing = undefined));
  }, intervalMs);
  timer.unref();

  return {
    async close() {
      clearInterval(timer);
      await balancing;
      await broker.close();
    },
  };
}
