/**
 * Queue depths for the metrics, asked at scrape time over a connection of its
 * own: a failed checkQueue closes its channel, and that must never be the
 * consuming channel. Connects on the first question, reconnects after a
 * failure on the next one, and answers `undefined` (series left out) when the
 * broker cannot be asked within the deadline. With several nodes it asks the
 * first that answers, starting after the one that failed last.
 */
import amqp, { type Channel, type ChannelModel } from 'amqplib';
import { AMQP_SOCKET_OPTIONS, errorMessage, withDeadline, type Logger, type Topology } from '@simplechat/shared';

export interface QueueDepth {
  /** deliveries ready in the partitions' queues together (not yet handed to a consumer) */
  messages: number;
  /** the same, per partition */
  partitions: number[];
  deadLetters: number;
}

export interface QueueMonitor {
  depth(): Promise<QueueDepth | undefined>;
  /** deliveries ready in one queue; 'absent' when the broker has no such queue, undefined when it cannot be asked */
  count(queue: string): Promise<number | 'absent' | undefined>;
  close(): Promise<void>;
}

export interface QueueMonitorDeps {
  amqpUrl: string | readonly string[];
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
  const urls = typeof deps.amqpUrl === 'string' ? [deps.amqpUrl] : [...deps.amqpUrl];
  let node = 0;

  function drop(): void {
    const c = connection;
    connection = undefined;
    channel = undefined;
    c?.close().catch(() => undefined);
  }

  async function open(): Promise<Channel> {
    let conn: ChannelModel | undefined;
    for (let tried = 0; !conn; tried++) {
      try {
        conn = await amqp.connect(urls[node] as string, { ...AMQP_SOCKET_OPTIONS, timeout: deps.timeoutMs });
      } catch (err) {
        node = (node + 1) % urls.length;
        if (tried + 1 >= urls.length) throw err;
      }
    }
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
    const [dl, ...qs] = await Promise.all([ch.checkQueue(deps.topology.deadLetterQueue), ...deps.topology.queues.map((q) => ch.checkQueue(q))]);
    const partitions = qs.map((q) => q.messageCount);
    return { messages: partitions.reduce((a, b) => a + b, 0), partitions, deadLetters: dl?.messageCount ?? 0 };
  }

  async function countOf(queue: string): Promise<number | 'absent'> {
    if (!channel) {
      opening ??= open().finally(() => (opening = undefined));
      await opening;
    }
    const ch = channel;
    if (!ch) throw new Error('no channel');
    try {
      return (await ch.checkQueue(queue)).messageCount;
    } catch (err) {
      // A passive declaration of a missing queue closes the channel: the next question opens another.
      if (/NOT_FOUND|404/.test(errorMessage(err))) {
        if (channel === ch) channel = undefined;
        return 'absent';
      }
      throw err;
    }
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
    count(queue) {
      if (isClosed) return Promise.resolve(undefined);
      return withDeadline(
        countOf(queue).catch((err: unknown) => {
          log.debug({ err: errorMessage(err), queue }, 'queue depth unavailable');
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
