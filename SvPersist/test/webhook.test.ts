/**
 * The webhook sender alone, on the real broker with a real HTTP receiver and a
 * short retry schedule: retries travel through the delay queues with their
 * attempt count, an answer that never comes counts as a failure, and an event
 * that keeps failing past the retry period is dead-lettered as exhausted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import amqp, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createMetrics, verifyWebhook } from '@simplechat/shared';
import { createWebhookSender, NotifyHeader, type WebhookSender } from '../src/webhook';
import { assertNotifyTopology, deleteNotifyTopology, notifyTopology, NOTIFY_ROUTING_KEY } from '../src/notify-topology';
import { createNotifyMetrics } from '../src/metrics';
import { replayDeadNotifications } from '../src/notify-replay';
import { eventually, isolation } from '../../test/helpers';
import { sample } from '../../test/metrics';
import { startWebhookReceiver, type WebhookReceiver } from '../../test/webhook-receiver';
import { silentLog, uniqueTag } from './support';

const SECRET = 'webhook-test-secret-of-at-least-32-bytes';
const iso = isolation();
const topology = notifyTopology(iso.queuePrefix, { delaysMs: [100, 300], giveUpAfterMs: 3000 });
const metrics = createMetrics({ service: 'SvPersist' });
const notifyMetrics = createNotifyMetrics(metrics, { outboxDepth: async () => undefined });
let receiver: WebhookReceiver;
let sender: WebhookSender;
let connection: ChannelModel;
let channel: ConfirmChannel;

beforeAll(async () => {
  receiver = await startWebhookReceiver();
  sender = createWebhookSender({ amqpUrl: iso.amqpUrl, topology, url: receiver.url, secret: SECRET, log: silentLog(), metrics: notifyMetrics, timeoutMs: 500 });
  await sender.ready();
  connection = await amqp.connect(iso.amqpUrl);
  channel = await connection.createConfirmChannel();
  await assertNotifyTopology(channel, topology);
});
afterAll(async () => {
  await sender?.close();
  if (channel) await deleteNotifyTopology(channel, topology);
  await connection?.close();
  await receiver?.close();
});

/** Publishes an event as the outbox does; resolves with its eventId. */
async function publishEvent(recipient: string): Promise<string> {
  const eventId = `EV${uniqueTag().toUpperCase()}`;
  const body = JSON.stringify({ type: 'messages.missed', eventId, recipient, messages: [], ts: Date.now() });
  await new Promise<void>((resolve, reject) =>
    channel.publish(topology.exchange, NOTIFY_ROUTING_KEY, Buffer.from(body), { persistent: true, messageId: eventId, contentType: 'application/json', headers: { [NotifyHeader.MISSED_AT_MS]: Date.now() } }, (err: unknown) => (err ? reject(new Error('nacked')) : resolve())),
  );
  return eventId;
}

describe('webhook retries through the broker', () => {
  it('an event that keeps failing is retried on the schedule, then dead-lettered as exhausted with its attempts, and counted', async () => {
    const recipient = `u-${uniqueTag()}`;
    receiver.respond = (event) => (event.recipient === recipient ? 503 : 200);
    const eventId = await publishEvent(recipient);
    const dead = await eventually(
      async () => {
        const m = await channel.get(topology.deadLetterQueue, { noAck: true });
        expect(m).toBeTruthy();
        return m as amqp.GetMessage;
      },
      { timeoutMs: 10_000, intervalMs: 100 },
    );
    const attempts = receiver.forRecipient(recipient);
    expect(dead.properties.messageId).toBe(eventId);
    expect(dead.properties.headers?.[NotifyHeader.REASON]).toBe('exhausted');
    expect(dead.properties.headers?.[NotifyHeader.ATTEMPTS]).toBe(attempts.length);
    expect(dead.properties.headers?.[NotifyHeader.LAST_RESULT]).toBe('HTTP 503');
    // 100 ms, then 300 ms each time, while the next attempt would start within 3 s of the first
    expect(attempts.length).toBeGreaterThanOrEqual(3);
    expect(attempts.every((a) => a.event.eventId === eventId && a.raw === attempts[0]?.raw)).toBe(true);
    for (const a of attempts) expect(await verifyWebhook(SECRET, a.raw, a.headers['simplechat-signature'] as string)).toBe(true);
    const text = await metrics.render();
    expect(sample(text, 'simplechat_notify_dead_lettered_total', { reason: 'exhausted' })).toBe(1);
    expect(sample(text, 'simplechat_notify_retries_total')).toBe(attempts.length - 1);
  });

  it('410 dead-letters at once; once the receiver is fixed, a replay posts the event again under its eventId', async () => {
    const recipient = `u-${uniqueTag()}`;
    receiver.respond = (event) => (event.recipient === recipient ? 410 : 200);
    const eventId = await publishEvent(recipient);
    await eventually(async () => expect((await channel.checkQueue(topology.deadLetterQueue)).messageCount).toBe(1));
    expect(receiver.forRecipient(recipient)).toHaveLength(1);
    receiver.respond = () => 200;
    expect(await replayDeadNotifications({ amqpUrl: iso.amqpUrl, topology })).toBe(1);
    await eventually(() => expect(receiver.forRecipient(recipient).map((r) => [r.event.eventId, r.status])).toEqual([[eventId, 410], [eventId, 200]]));
    expect((await channel.checkQueue(topology.deadLetterQueue)).messageCount).toBe(0);
    expect(sample(await metrics.render(), 'simplechat_notify_dead_lettered_total', { reason: 'gone' })).toBe(1);
  });

  it('a receiver that does not answer within the deadline counts as a failure: the event is retried', async () => {
    const recipient = `u-${uniqueTag()}`;
    // a server that reads the request and never answers
    const silent: Server = createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const slow = notifyTopology(`${iso.queuePrefix}slow.`, topology.schedule);
    const slowSender = createWebhookSender({
      amqpUrl: iso.amqpUrl,
      topology: slow,
      url: `http://127.0.0.1:${(silent.address() as AddressInfo).port}/`,
      secret: SECRET,
      log: silentLog(),
      metrics: notifyMetrics,
      timeoutMs: 300,
    });
    try {
      await slowSender.ready();
      const before = sample(await metrics.render(), 'simplechat_notify_retries_total') ?? 0;
      const eventId = `EV${uniqueTag().toUpperCase()}`;
      await new Promise<void>((resolve, reject) =>
        channel.publish(slow.exchange, NOTIFY_ROUTING_KEY, Buffer.from(JSON.stringify({ type: 'messages.missed', eventId, recipient, messages: [], ts: Date.now() })), { persistent: true, messageId: eventId }, (err: unknown) =>
          err ? reject(new Error('nacked')) : resolve(),
        ),
      );
      await eventually(async () => expect((sample(await metrics.render(), 'simplechat_notify_retries_total') ?? 0) - before).toBeGreaterThanOrEqual(2), { timeoutMs: 10_000 });
    } finally {
      await slowSender.close();
      silent.closeAllConnections();
      await new Promise<void>((r) => silent.close(() => r()));
      await deleteNotifyTopology(channel, slow);
    }
  });
});
