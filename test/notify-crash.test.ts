/**
 * Notifications survive a SvPersist killed with SIGKILL while its events are
 * being retried: the retries wait in the broker, the decisions in Postgres,
 * and a new process takes up both. Every missed message reaches the receiver,
 * each in exactly one eventId (repeats only as retries of one eventId, with
 * the same body); so does a second notifying SvPersist running beside the
 * first. The notifying SvPersist is a real process (dist/main.js) beside the
 * cluster's own, which stores messages with notifications off. A receipt the
 * cluster's own SvPersist holds unstored is not overtaken by the notifier,
 * which only stands by on the queue: it waits for the other's report.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client } from 'pg';
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
    // this test's recipients only: the notifiers the test before killed may leave one of its events to be posted again
    const mine = () => receiver.received.filter((r) => [bob, carol, dave].includes(r.event.recipient));
    const delivered = () => mine().filter((r) => r.status === 200);
    // at least once: an attempt requeued by the kill after its next step was queued is posted twice, under its eventId
    await eventually(() => expect([...new Set(delivered().flatMap((r) => r.event.messages.map((m) => m.msgId)))].sort()).toEqual([...sent].sort()), { timeoutMs: 40_000, intervalMs: 250 });
    // every request, failed ones included: one body per eventId, each message in exactly one eventId
    const events = eventsById(mine());
    const msgIds = [...events.values()].flatMap((e) => e.msgIds);
    expect(msgIds.sort()).toEqual([...sent].sort());
    expect([...events.values()].some((e) => e.attempts >= 3)).toBe(true);
  });
});

describe('a receipt another SvPersist holds unstored', () => {
  it('is not overtaken: the notifier waits for the report of the instance that holds it, and notifies no one', { timeout: 60_000 }, async () => {
    receiver.respond = () => 200;
    // one queue partition: the cluster's own SvPersist is active on it, the notifier stands by
    await notifier?.kill();
    notifier = await startNotifier();
    const [alice, bob, carol] = [uid('alice'), uid('bob'), uid('carol')];
    const a = await c.connect(alice);
    const b = await c.connect(bob);
    open.push(a, b);
    const ack = await a.request({ type: 'send', to: bob, body: 'seen in time' });
    const seen = await b.waitForMessage((m) => m.msgId === ack.msgId);
    await eventually(async () => expect((await c.db.query('SELECT 1 FROM messages WHERE id = $1', [ack.msgId])).rowCount).toBe(1));
    // the receipt's batch waits for this lock in the cluster's SvPersist
    const blocker = new Client({ connectionString: c.databaseUrl });
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE marks IN EXCLUSIVE MODE');
      b.send({ type: 'receipt', kind: 'delivered', with: alice, upTo: seen.seq });
      // A notifier that did not know of the held receipt decides within about two seconds after the
      // miss (1-2 s measured in test/notify.test.ts): wait until the notifier's own report is 3 s
      // past it while the report of the instance holding the receipt stays behind it.
      const missAt = (ack.ts as number) + 1000;
      await eventually(
        async () => {
          const { rows } = await c.db.query("SELECT caught_up_ms::text AS at FROM storage_progress WHERE reported_at > now() - interval '2 seconds'");
          const reported = rows.map((r) => Number(r.at));
          expect(reported.some((at) => at > missAt + 3000) && reported.some((at) => at < missAt)).toBe(true);
        },
        { timeoutMs: 15_000, intervalMs: 250 },
      );
    } finally {
      await blocker.query('ROLLBACK').catch(() => undefined);
      await blocker.end();
    }
    await eventually(async () => expect((await c.db.query('SELECT delivered_up_to::int AS d FROM marks WHERE user_id = $1', [bob])).rows).toEqual([{ d: seen.seq }]));
    // a later miss is notified: the notifier has decided past bob's message
    const later = await a.request({ type: 'send', to: carol, body: 'missed' });
    await eventually(() => expect(receiver.forRecipient(carol).flatMap((r) => r.event.messages.map((m) => m.msgId))).toContain(later.msgId), { timeoutMs: 20_000 });
    expect(receiver.forRecipient(bob)).toEqual([]);
  });
});
