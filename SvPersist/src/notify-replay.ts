/**
 * Puts dead-lettered notification events back on the notify queue, after the
 * receiver is fixed. Each keeps its eventId and body (a receiver that already
 * has it drops it) and starts a fresh retry schedule: the dead letter's
 * x-reason and x-attempts stay behind. One event at a time: published
 * (confirmed) before its dead letter is acked, so none is lost on the way.
 */
import amqp from 'amqplib';
import { AMQP_SOCKET_OPTIONS } from '@simplechat/shared';
import { assertNotifyTopology, NOTIFY_ROUTING_KEY, type NotifyTopology } from './notify-topology';
import { NotifyHeader } from './webhook';

export interface ReplayOptions {
  amqpUrl: string;
  topology: NotifyTopology;
  /** at most this many (default: all that are there now) */
  limit?: number;
}

/** Resolves with the events put back. */
export async function replayDeadNotifications(options: ReplayOptions): Promise<number> {
  const { topology } = options;
  const connection = await amqp.connect(options.amqpUrl, AMQP_SOCKET_OPTIONS);
  try {
    const channel = await connection.createConfirmChannel();
    await assertNotifyTopology(channel, topology);
    const limit = options.limit ?? (await channel.checkQueue(topology.deadLetterQueue)).messageCount;
    let replayed = 0;
    while (replayed < limit) {
      const dead = await channel.get(topology.deadLetterQueue, { noAck: false });
      if (!dead) break;
      const { messageId, contentType, headers = {} } = dead.properties;
      const missedAt = headers[NotifyHeader.MISSED_AT_MS] as unknown;
      const kept = { ...(missedAt === undefined ? {} : { [NotifyHeader.MISSED_AT_MS]: missedAt }), [NotifyHeader.REPLAYED]: true };
      await new Promise<void>((resolve, reject) =>
        channel.publish(topology.exchange, NOTIFY_ROUTING_KEY, dead.content, { persistent: true, messageId, contentType, headers: kept }, (err: unknown) => (err ? reject(new Error(`the broker refused event ${String(messageId)}`)) : resolve())),
      );
      channel.ack(dead);
      replayed++;
    }
    await channel.close();
    return replayed;
  } finally {
    await connection.close().catch(() => undefined);
  }
}
