/**
 * Notifications survive a SvPersist killed with SIGKILL while its events are
 * being retried: the retries wait in the broker, the decisions in Postgres,
 * and a new process takes up both. Every missed message reaches the receiver,
 * each in exactly one eventId (repeats only as retries of one eventId, with
 * the same body); so does a second notifying SvPersist running beside the
 * first. The notifying SvPersist is a real process (dist/main.js) beside the
 * cluster's own, which stores messages with notifications off.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProtocolSocket } from '@simplechat/shared';
import { persistProcessEnv, startCluster, startServiceProcess, uid, type ServiceProcess, type TestCluster } from './cluster';
import { databasePerFile, eventually } from './helpers';
import { eventsById, startWebhookReceiver, type WebhookReceiver } from './webhook-receiver';

const databaseUrl = databasePerFile('notifycrash');
let receiver: WebhookReceiver;
let c: TestCluster;
let notifier: ServiceProcess | undefined;
let second: ServiceProcess | undefined;
const open: ProtocolSocket[] = [];

function startNotifier(): Promise<ServiceProcess> {
  return startServiceProcess('SvPersist', persistProcessEnv(c, { NOTIFY_WEBHOOK_URL: receiver.url, NOTIFY_WEBHOOK_SECRET: 'crash-test-secret-of-at-least-32-bytes', NOTIFY_AFTER_MS: '1000' }));
}

beforeAll(async () => {
  receiver = await startWebhookReceiver();
  c = await startCluster({ wsCount: 1, databaseUrl });
});
afterAll(async () => {
  for (const s of open) s.close();
  await notifier?.kill();
  await second?.kill();
  await c?.close();
  await receiver?.close();
});

describe('two notifying SvPersist instances', () => {
  it('at once: every missed message is in exactly one eventId (one decides each pass, both publish and post)', { timeout: 60_000 }, async () => {
    receiver.respond = () => 200;
    notifier = await startNotifier();
    second = await startNotifier();
    const alice = uid('alice');
    const offline = Array.from({ length: 8 }, (_, i) => uid(`user${i}`));
    const a = await c.connect(alice);
    open.push(a);
    const sent: string[] = [];
    for (let round = 0; round < 5; round++) {
      for (const user of offline) sent.push((await a.request({ type: 'send', to: user, body: `round ${round}` })).msgId as string);
      await new Promise((r) => setTimeout(r, 600));
    }
    const received = () => receiver.received.filter((r) => offline.includes(r.event.recipient));
    await eventually(() => expect(received().flatMap((r) => r.event.messages.map((m) => m.msgId)).sort()).toEqual([...sent].sort()), { timeoutMs: 30_000, intervalMs: 250 });
    const msgIds = [...eventsById(received()).values()].flatMap((e) => e.msgIds);
    expect(msgIds.sort()).toEqual([...sent].sort());
    await notifier.kill();
    await second.kill();
    notifier = second = undefined;
  });
});

describe('a notifying SvPersist killed mid-retry', () => {
  it('nothing is missed and nothing is sent twice under different eventIds', { timeout: 90_000 }, async () => {
    let isHealed = false;
    receiver.respond = () => (isHealed ? 200 : 500);
    receiver.received.length = 0;
    notifier = await startNotifier();
    const [alice, bob, carol, dave] = [uid('alice'), uid('bob'), uid('carol'), uid('dave')];
    const a = await c.connect(alice);
    open.push(a);
    const sent: string[] = [];
    const send = async (to: string, body: string) => {
      const ack = await a.request({ type: 'send', to, body });
      expect(ack.type).toBe('ack');
      sent.push(ack.msgId as string);
    };
    await send(bob, 'one');
    await send(carol, 'two');
    await send(bob, 'three');
    // every event has failed twice: it waits in the broker's 5 s delay queue
    await eventually(() => {
      for (const user of [bob, carol]) expect(receiver.forRecipient(user).length).toBeGreaterThanOrEqual(2);
    }, { timeoutMs: 20_000 });
    await notifier.kill();
    // accepted and stored (by the cluster's SvPersist) while the notifier is dead
    await send(bob, 'four');
    await send(dave, 'five');
    await new Promise((r) => setTimeout(r, 2000));
    notifier = await startNotifier();
    isHealed = true;
    const delivered = () => receiver.received.filter((r) => r.status === 200);
    await eventually(() => expect(delivered().flatMap((r) => r.event.messages.map((m) => m.msgId)).sort()).toEqual([...sent].sort()), { timeoutMs: 40_000, intervalMs: 250 });
    // every request, failed ones included: one body per eventId, each message in exactly one eventId
    const events = eventsById(receiver.received);
    const msgIds = [...events.values()].flatMap((e) => e.msgIds);
    expect(msgIds.sort()).toEqual([...sent].sort());
    expect([...events.values()].some((e) => e.attempts >= 3)).toBe(true);
  });
});
