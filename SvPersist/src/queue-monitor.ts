/**
 * Queue depths for the metrics, asked at scrape time over a connection of its
 * own: a failed checkQueue closes its channel, and that must never be the
 * consuming channel. Connects on the first question, reconnects after a
 * failure on the next one, and answers `undefined` (series left out) when the
 * broker cannot be asked within the deadline.
 */
import amqp, { type Channel, type ChannelModel } from 'amqplib';
import { AMQP_SOCKET_OPTIONS, errorMessage, withDeadline, type Logger, type Topology } from '@simplechat/shared';

export interface QueueDepth {
  /** deliveries ready in the message queue (not yet handed to a consumer) */
  messages: number;
  deadLetters: number;
}

export interface QueueMonitor {
  depth(): Promise<QueueDepth | undefined>;
  close(): Promise<void>;
}

export interface QueueMonitorDeps {
  amqpUrl: string;
  topology: Topology;
  timeoutMs: number;
  log: Logger;
}

export function createQueueMonitor(deps: QueueMonitorDeps): QueueMonitor {
  const log = deps.log.child({ component: 'queue-monitor' });
  let connection: ChannelModel | undefined;
  let channel: Channel | undefined;
  let opening: Promise<Channel> | undefined;
  let isClosed = false;
  let closing: Promise<void> | undefined;

  function drop(): void {
    const c = connection;
    connection = undefined;
    channel = undefined;
    c?.close().catch(() => undefined);
  }

  async function open(): Promise<Channel> {
    const conn = await amqp.connect(deps.amqpUrl, { ...AMQP_SOCKET_OPTIONS, timeout: deps.timeoutMs });
    conn.on('error', (err: Error) => log.debug({ err: errorMessage(err) }, 'queue monitor connection error'));
    conn.on('close', () => {
      if (connection === conn) drop();
    });
    if (isClosed) {
      await conn.close().catch(() => undefined);
      throw new Error('closed');
    }
    const ch = await conn.createChannel();
    ch.on('error', (err: Error) => log.debug({ err: errorMessage(err) }, 'queue monitor channel error'));
    ch.on('close', () => {
      if (channel === ch) channel = undefined;
    });
    connection = conn;
    channel = ch;
    return ch;
  }

  async function ask(): Promise<QueueDepth> {
    if (!channel) {
      opening ??= open().finally(() => (opening = undefined));
      await opening;
    }
    const ch = channel;
    if (!ch) throw new Error('no channel');
    const [q, dl] = await Promise.all([ch.checkQueue(deps.topology.queue), ch.checkQueue(deps.topology.deadLetterQueue)]);
    return { messages: q.messageCount, deadLetters: dl.messageCount };
  }

  return {
    depth() {
      if (isClosed) return Promise.resolve(undefined);
      return withDeadline(
        ask().catch((err: unknown) => {
          log.debug({ err: errorMessage(err) }, 'queue depth unavailable');
          drop();
          return undefined;
        }),
        deps.timeoutMs,
        undefined,
      );
    },
    close() {
      closing ??= (async () => {
        isClosed = true;
        await opening?.catch(() => undefined);
        const c = connection;
        connection = undefined;
        channel = undefined;
        await c?.close().catch(() => undefined);
      })();
      return closing;
    },
  };
}
