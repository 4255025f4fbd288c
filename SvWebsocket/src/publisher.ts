/**
 * Durable hand-off to storage: accepted messages are published to RabbitMQ on a
 * small pool of confirm channels, each with at most one batch awaiting its
 * confirm. Messages accepted while every channel is busy wait for the next free
 * one and travel together as one AMQP message (one confirm): at low rates a
 * message goes out in the tick it was accepted, and under load batches grow with
 * the load, so the broker's confirm rate is spent on batches, not messages.
 * A publish resolves only on the broker's confirm; it rejects with
 * UnavailableError on nack, timeout or no broker.
 *
 * The write path is partitioned by conversation: a batch is split by partition
 * and each part goes to its partition's queue as one AMQP message (messages and
 * receipts of a conversation always to the same one), each part's senders
 * answered on that part's confirm.
 */
import type { Channel, ConfirmChannel } from 'amqplib';
import { assertTopology, createAmqpConnection, encodePayload, partitionOf, partitionRoutingKey, UnavailableError, errorMessage, type AmqpSession, type Topology, type Envelope, type Receipt, type Logger } from '@simplechat/shared';
import type { PublisherMetrics, PublishFailure } from './metrics';
import { eachTick, type Pacer } from './pacer';

export interface Publisher {
  publish(message: Envelope): Promise<void>;
  /** a receipt, in the same batches as messages: resolves on the broker's confirm */
  publishReceipt(receipt: Receipt): Promise<void>;
  isReady(): boolean;
  /** resolves once connected (or rejects on close) */
  ready(): Promise<void>;
  close(): Promise<void>;
}

export interface PublisherDeps {
  /** the broker's nodes (AMQP_URLS), or one URL */
  url: string | readonly string[];
  topology: Topology;
  channels: number;
  timeoutMs: number;
  log: Logger;
  /** most messages in one AMQP message */
  maxBatch?: number;
  metrics?: PublisherMetrics;
  /** when accepted messages go out while a channel is free (default: the next tick) */
  pacer?: Pacer;
  /** the broker's queues differ from this process's settings (QUEUE_TYPE, QUEUE_PARTITIONS): the service stops */
  onFatal?(err: Error): void;
}

type QueueItem = Envelope | Receipt;

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

export function createPublisher(deps: PublisherDeps): Publisher {
  const log = deps.log.child({ component: 'publisher' });
  const maxBatch = deps.maxBatch ?? 500;
  let channels: ConfirmChannel[] = [];
  /** the session the channels belong to, and how a channel leaves the list */
  let current: { session: AmqpSession; dropChannel(ch: Channel): void } | undefined;
  /** channels with a batch awaiting its confirm */
  const busy = new Set<ConfirmChannel>();
  let closed = false;
  /** messages and receipts in the order accepted, each with its waiter */
  let pending: { messages: QueueItem[]; waiters: Waiter[] } = { messages: [], waiters: [] };
  /** the last flush left messages behind because every channel was busy */
  let waitingForChannel = false;
  const inflight = new Set<Promise<void>>();

  function unavailable(reason: string): UnavailableError {
    return new UnavailableError(`message broker unavailable (${reason}); retry with the same id`);
  }

  /** On each new connection: the confirm channels, and the topology asserted on the first. */
  async function openChannels(session: AmqpSession): Promise<void> {
    session.connection.on('blocked', (reason: string) => log.warn({ reason }, 'broker blocked publishing'));
    session.connection.on('unblocked', () => log.info('broker unblocked publishing'));
    // A channel that closes alone is left out; the others publish on.
    const dropChannel = (ch: Channel) => {
      channels = channels.filter((c) => c !== ch);
    };
    const chans: ConfirmChannel[] = [];
    for (let i = 0; i < deps.channels; i++) chans.push(await session.createConfirmChannel({ onClose: dropChannel }));
    await assertTopology(chans[0] as ConfirmChannel, deps.topology);
    if (session.isLost) return;
    channels = chans;
    current = { session, dropChannel };
  }

  /**
   * A channel whose publish was refused (nack) or not confirmed in time is not trusted again:
   * after a quorum queue's leader moved (its node died), a channel can go on being refused for
   * that queue, or never hear of its confirms, while a new channel is served at once. It is
   * closed and a new channel on the same connection takes its place; if that fails, the
   * connection's own recovery takes over.
   */
  function replaceChannel(ch: ConfirmChannel, why: string): void {
    const at = current;
    if (!at || at.session.isLost || closed || !channels.includes(ch)) return;
    at.dropChannel(ch);
    ch.close().catch(() => undefined);
    log.warn(`${why} on a channel; replacing it`);
    at.session
      .createConfirmChannel({ onClose: at.dropChannel })
      .then((fresh) => {
        if (at.session.isLost || closed || current !== at) fresh.close().catch(() => undefined);
        else channels = [...channels, fresh];
      })
      .catch((err: unknown) => log.warn(`could not open a new channel (${errorMessage(err)}); waiting for the connection to recover`));
  }

  function dropChannels(): void {
    channels = [];
    current = undefined;
    if (pending.messages.length > 0) flush(); // waiting for a channel that is gone: unavailable now
  }

  /** close(): in-flight confirms settle (confirm or timeout) before the connection goes; batches waiting for a free channel go out as confirms free them. */
  async function drain(): Promise<void> {
    for (;;) {
      if (pending.messages.length > 0) flush();
      if (inflight.size === 0) break;
      await Promise.all([...inflight]);
    }
  }

  /** The items of one batch by partition, each part with its own waiters. */
  function byPartition(items: QueueItem[], waiters: Waiter[]): Map<number, { messages: Envelope[]; receipts: Receipt[]; waiters: Waiter[] }> {
    const parts = new Map<number, { messages: Envelope[]; receipts: Receipt[]; waiters: Waiter[] }>();
    const n = deps.topology.partitions;
    items.forEach((item, i) => {
      const p = partitionOf(item.conversation, n);
      let part = parts.get(p);
      if (!part) parts.set(p, (part = { messages: [], receipts: [], waiters: [] }));
      if ('upTo' in item) part.receipts.push(item);
      else part.messages.push(item);
      part.waiters.push(waiters[i] as Waiter);
    });
    return parts;
  }

  /** One AMQP message per partition of the batch; the channel is busy until every part is settled. */
  function publishBatch(ch: ConfirmChannel, items: QueueItem[], waiters: Waiter[]): void {
    busy.add(ch);
    const parts = [...byPartition(items, waiters)];
    let unsettled = parts.length;
    const startedAt = performance.now();
    const done = new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        replaceChannel(ch, `no confirm within ${deps.timeoutMs} ms`);
        for (const settle of settlers) settle(unavailable(`no confirm within ${deps.timeoutMs} ms`), 'timeout');
      }, deps.timeoutMs);
      const settlers = parts.map(([partition, part]) => {
        let settled = false;
        const settle = (err: Error | null, failure?: PublishFailure): void => {
          if (settled) return;
          settled = true;
          if (err) deps.metrics?.failed(failure ?? 'error', part.messages.length);
          else deps.metrics?.confirmed(part.messages.length, (performance.now() - startedAt) / 1000);
          for (const w of part.waiters) (err ? w.reject(err) : w.resolve());
          if (--unsettled > 0) return;
          clearTimeout(timer);
          busy.delete(ch);
          // What waited for a channel goes out on the one just freed; what merely collected since
          // the last flush waits for the pacer, so that batches grow instead of following confirms.
          if (waitingForChannel && pending.messages.length > 0) flush();
          resolve();
        };
        return { partition, part, settle };
      }).map(({ partition, part, settle }) => {
        try {
          ch.publish(deps.topology.exchange, partitionRoutingKey(partition), encodePayload(part.messages, part.receipts), { persistent: true, contentType: 'application/json' }, (err) => {
            if (err) replaceChannel(ch, `the broker refused a publish to partition ${partition}`);
            settle(err ? unavailable('the broker refused the message') : null, 'nack');
          });
        } catch (err) {
          // settled below, once every settler exists
          queueMicrotask(() => settle(unavailable(errorMessage(err))));
        }
        return settle;
      });
    });
    inflight.add(done);
    void done.then(() => inflight.delete(done));
  }

  const scheduleFlush = (deps.pacer ?? eachTick)(flush);

  function flush(): void {
    waitingForChannel = false;
    if (channels.length === 0) {
      const { waiters } = pending;
      pending = { messages: [], waiters: [] };
      if (waiters.length === 0) return;
      const err = unavailable(`not connected to ${broker.host}`);
      deps.metrics?.failed('not_connected', waiters.length);
      for (const w of waiters) w.reject(err);
      return;
    }
    for (const ch of channels) {
      if (pending.messages.length === 0) return;
      if (busy.has(ch)) continue;
      const messages = pending.messages.splice(0, maxBatch);
      const waiters = pending.waiters.splice(0, messages.length);
      publishBatch(ch, messages, waiters);
    }
    // Every channel is busy: the rest waits for the next confirm.
    if (pending.messages.length > 0) waitingForChannel = true;
  }

  function enqueue(item: QueueItem): Promise<void> {
    if (closed) {
      deps.metrics?.failed('not_connected', 1);
      return Promise.reject(unavailable('this instance is shutting down'));
    }
    if (channels.length === 0) {
      deps.metrics?.failed('not_connected', 1);
      return Promise.reject(unavailable(`not connected to ${broker.host}`));
    }
    return new Promise<void>((resolve, reject) => {
      pending.messages.push(item);
      pending.waiters.push({ resolve, reject });
      scheduleFlush();
    });
  }

  const broker = createAmqpConnection({ url: deps.url, name: `SvWebsocket ${deps.topology.exchange}`, log, setup: openChannels, onLost: dropChannels, drain, onFatal: deps.onFatal });

  return {
    publish: enqueue,
    publishReceipt: enqueue,
    isReady: () => channels.length > 0,
    ready: () => broker.ready(),
    close() {
      closed = true;
      return broker.close();
    },
  };
}
