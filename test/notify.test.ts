/**
 * Notifications for missed messages (PROTOCOL.md v1.2) on a whole cluster with
 * the real services and a real HTTP receiver: who gets an event and who does
 * not (receipts, rooms, mutes), its headers, body and signature, retries under
 * one eventId, 410, and a receiver that is down for 30 s. The file has a
 * database of its own: the notifier reads every conversation of its database.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import amqp from 'amqplib';
import { verifyWebhook, type ProtocolSocket, type MissedMessagesEvent } from '@simplechat/shared';
import { startCluster, uid, type TestCluster } from './cluster';
import { databasePerFile, eventually } from './helpers';
import { services } from './services';
import { startWebhookReceiver, eventsById, type ReceivedWebhook, type WebhookReceiver } from './webhook-receiver';
import { notifyTopology } from '../SvPersist/src/notify-topology';
import { sample, scrape } from './metrics';

const SECRET = 'notify-test-secret-of-at-least-32-bytes';
const AFTER_MS = 1000;
const databaseUrl = databasePerFile('notify');
let receiver: WebhookReceiver;
let c: TestCluster;
const open: ProtocolSocket[] = [];
/** per first attempt: ms from the miss (ack ts + NOTIFY_AFTER_MS of the earliest message) to the request */
const latenciesMs: number[] = [];

beforeAll(async () => {
  receiver = await startWebhookReceiver();
  c = await startCluster({ wsCount: 1, databaseUrl, persistEnv: { NOTIFY_WEBHOOK_URL: receiver.url, NOTIFY_WEBHOOK_SECRET: SECRET, NOTIFY_AFTER_MS: String(AFTER_MS) } });
});
afterAll(async () => {
  for (const s of open) s.close();
  await c?.close();
  await receiver?.close();
  if (latenciesMs.length > 0) {
    const sorted = [...latenciesMs].sort((a, b) => a - b);
    const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
    console.info(`notify: miss -> first attempt over ${sorted.length} events: min ${sorted[0]} ms, median ${at(0.5)} ms, max ${sorted[sorted.length - 1]} ms`);
  }
});

async function connect(user: string): Promise<ProtocolSocket> {
  const s = await c.connect(user);
  open.push(s);
  return s;
}

async function send(s: ProtocolSocket, target: { to: string } | { room: string }, body: string): Promise<{ msgId: string; seq: number; ts: number }> {
  const ack = await s.request({ type: 'send', ...target, body });
  expect(ack.type).toBe('ack');
  return ack as unknown as { msgId: string; seq: number; ts: number };
}

/** The first attempts of the events for `user`, once there are `n` of them (answered at once: their latency is recorded). */
async function eventsFor(user: string, n: number, timeoutMs = 15_000): Promise<ReceivedWebhook[]> {
  const firsts = await eventually(
    () => {
      const seen = new Map<string, ReceivedWebhook>();
      for (const r of receiver.forRecipient(user)) if (!seen.has(r.event.eventId)) seen.set(r.event.eventId, r);
      expect(seen.size).toBe(n);
      return [...seen.values()];
    },
    { timeoutMs },
  );
  for (const r of firsts) recordLatency(r);
  return firsts;
}

/**
 * Waits until the notifier has decided everything accepted before this call: a message to a
 * fresh offline user is notified only once the rows before it were examined (commit order).
 */
async function settled(): Promise<void> {
  const [from, to] = [uid('marker-from'), uid('marker-to')];
  const s = await connect(from);
  await send(s, { to }, 'marker');
  await eventsFor(to, 1);
}

const recorded = new Set<string>();
function recordLatency(r: ReceivedWebhook): void {
  if (recorded.has(r.event.eventId)) return;
  recorded.add(r.event.eventId);
  const earliest = Math.min(...r.event.messages.map((m) => m.ts));
  latenciesMs.push(r.at - (earliest + AFTER_MS));
}

// Each test waits for the notifier (about 2 s a round); a loaded machine stretches that.
describe('who is notified', { timeout: 60_000 }, () => {
  it('an offline recipient gets one event with the message: headers, body and signature as the contract says', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice);
    const ack = await send(a, { to: bob }, 'are you there?');
    const [got] = await eventsFor(bob, 1);
    const r = got as ReceivedWebhook;
    expect(r.headers['content-type']).toBe('application/json');
    expect(r.headers['simplechat-event-id']).toBe(r.event.eventId);
    expect(r.event).toEqual({
      type: 'messages.missed',
      eventId: expect.stringMatching(/^[0-9A-Z]{26}$/),
      recipient: bob,
      messages: [{ msgId: ack.msgId, from: alice, to: bob, body: 'are you there?', ts: ack.ts, seq: ack.seq }],
      ts: expect.any(Number),
    } satisfies MissedMessagesEvent);
    expect(JSON.parse(r.raw)).toEqual(r.event);
    // The miss is at ack + NOTIFY_AFTER_MS; the contract's first attempt is within 5 s of it.
    expect(r.at).toBeGreaterThanOrEqual(ack.ts + AFTER_MS);
    const header = r.headers['simplechat-signature'] as string;
    expect(header).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
    expect(await verifyWebhook(SECRET, r.raw, header)).toBe(true);
    expect(await verifyWebhook(SECRET, r.raw.replace('are you there?', 'send me money'), header)).toBe(false);
    expect(await verifyWebhook('another-secret-of-at-least-32-bytes!!', r.raw, header)).toBe(false);
    // the sender is not notified of its own message
    await settled();
    expect(receiver.forRecipient(bob)).toHaveLength(1);
    expect(receiver.forRecipient(alice)).toHaveLength(0);
  });

  it('a recipient whose connection sent `delivered` in time gets none; one connected but sending no receipts is notified', async () => {
    const [alice, bob, carol] = [uid('alice'), uid('bob'), uid('carol')];
    const a = await connect(alice);
    const b = await connect(bob);
    await connect(carol);
    const toBob = await send(a, { to: bob }, 'hi bob');
    const seen = await b.waitForMessage((m) => m.msgId === toBob.msgId);
    b.send({ type: 'receipt', kind: 'delivered', with: alice, upTo: seen.seq });
    await send(a, { to: carol }, 'hi carol');
    await eventsFor(carol, 1);
    await settled();
    expect(receiver.forRecipient(bob)).toEqual([]);
  });

  it("a room's offline members each get their event with the room's messages; the sender and a member who read them get none", async () => {
    const [owner, bob, carol, dave] = [uid('owner'), uid('bob'), uid('carol'), uid('dave')];
    const o = await connect(owner);
    const d = await connect(dave);
    const info = await o.request({ type: 'room.create', name: 'Team', members: [bob, carol, dave] });
    const room = info.room as string;
    const first = await send(o, { room }, 'standup in 5');
    const second = await send(o, { room }, 'standup now');
    await d.waitForMessage((m) => m.msgId === second.msgId);
    d.send({ type: 'receipt', kind: 'read', room, upTo: second.seq });
    await settled();
    for (const member of [bob, carol]) {
      // One event when both became due in the same pass of the notifier (nearly always), else two:
      // either way each message is in exactly one event, in order.
      const events = new Map<string, ReceivedWebhook>();
      for (const r of receiver.forRecipient(member)) if (!events.has(r.event.eventId)) events.set(r.event.eventId, r);
      expect(events.size).toBeGreaterThanOrEqual(1);
      expect([...events.values()].flatMap((r) => r.event.messages)).toEqual([
        { msgId: first.msgId, from: owner, room, body: 'standup in 5', ts: first.ts, seq: first.seq },
        { msgId: second.msgId, from: owner, room, body: 'standup now', ts: second.ts, seq: second.seq },
      ]);
    }
    expect(receiver.forRecipient(owner)).toEqual([]);
    expect(receiver.forRecipient(dave)).toEqual([]);
  });

  it('a muted conversation gets none; unmuted, it is notified again', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice);
    const b = await connect(bob);
    await send(a, { to: bob }, 'first');
    await eventsFor(bob, 1);
    expect(await b.request({ type: 'mute', with: alice, until: Date.now() + 3_600_000 })).toMatchObject({ type: 'muted', with: alice });
    await send(a, { to: bob }, 'while muted');
    await settled();
    expect(receiver.forRecipient(bob)).toHaveLength(1);
    expect(await b.request({ type: 'mute', with: alice, until: 0 })).toMatchObject({ type: 'muted', until: 0 });
    const after = await send(a, { to: bob }, 'after unmuting');
    const [, again] = await eventsFor(bob, 2);
    expect(again?.event.messages.map((m) => m.msgId)).toEqual([after.msgId]);
  });

  it('SvPersist down while a message is delivered and its receipt sent: stored together later, it is not notified', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice);
    const b = await connect(bob);
    // the first message gives the conversation its block of positions (the gateway asks SvPersist)
    const first = await send(a, { to: bob }, 'first');
    b.send({ type: 'receipt', kind: 'delivered', with: alice, upTo: (await b.waitForMessage((m) => m.msgId === first.msgId)).seq });
    await c.stopPersist();
    try {
      const second = await send(a, { to: bob }, 'while storage is down');
      b.send({ type: 'receipt', kind: 'delivered', with: alice, upTo: (await b.waitForMessage((m) => m.msgId === second.msgId)).seq });
      // queued past its miss time: once stored it is due at once, and its receipt is right behind it
      await new Promise((r) => setTimeout(r, AFTER_MS + 2000));
    } finally {
      await c.restartPersist();
    }
    await settled();
    expect(receiver.forRecipient(bob)).toEqual([]);
  });

  it('a message to oneself notifies no one', async () => {
    const alice = uid('alice');
    const a = await connect(alice);
    await send(a, { to: alice }, 'note to self');
    await settled();
    expect(receiver.forRecipient(alice)).toEqual([]);
  });

  it('more than 100 missed messages for one recipient come in events of at most 100, each message in exactly one', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice);
    const sent: string[] = [];
    for (let i = 0; i < 130; i++) sent.push((await send(a, { to: bob }, `m${i}`)).msgId);
    await eventually(() => expect(receiver.forRecipient(bob).flatMap((r) => r.event.messages)).toHaveLength(130), { timeoutMs: 20_000 });
    const events = eventsById(receiver.forRecipient(bob));
    for (const e of events.values()) expect(e.msgIds.length).toBeLessThanOrEqual(100);
    expect([...events.values()].flatMap((e) => e.msgIds).sort()).toEqual([...sent].sort());
  });
});

describe('delivery', { timeout: 60_000 }, () => {
  it('the receiver answering 500, then 200: the same event is posted again under the same eventId, about 1 s later', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    receiver.respond = (event, attempt) => (event.recipient === bob && attempt === 0 ? 500 : 200);
    const a = await connect(alice);
    await send(a, { to: bob }, 'retry me');
    const attempts = await eventually(() => {
      const got = receiver.forRecipient(bob);
      expect(got).toHaveLength(2);
      return got;
    });
    const [one, two] = attempts as [ReceivedWebhook, ReceivedWebhook];
    expect(two.event.eventId).toBe(one.event.eventId);
    expect(two.raw).toBe(one.raw);
    expect([one.status, two.status]).toEqual([500, 200]);
    expect(two.at - one.at).toBeGreaterThanOrEqual(900);
    expect(await verifyWebhook(SECRET, two.raw, two.headers['simplechat-signature'] as string)).toBe(true);
    await settled();
    expect(receiver.forRecipient(bob)).toHaveLength(2);
  });

  it('410 Gone: dead-lettered at once (no retry), kept in the dead-letter queue with its reason, and counted', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    receiver.respond = (event) => (event.recipient === bob ? 410 : 200);
    const before = sample(await scrape(c.persistUrl), 'simplechat_notify_dead_lettered_total', { reason: 'gone' }) ?? 0;
    const a = await connect(alice);
    await send(a, { to: bob }, 'nobody home');
    const [r] = await eventsFor(bob, 1);
    await eventually(async () => expect(sample(await scrape(c.persistUrl), 'simplechat_notify_dead_lettered_total', { reason: 'gone' })).toBe(before + 1));
    const conn = await amqp.connect(services().amqpUrl);
    try {
      const ch = await conn.createChannel();
      const dead = await ch.get(notifyTopology(c.queuePrefix).deadLetterQueue, { noAck: true });
      expect(dead && dead.properties.messageId).toBe(r?.event.eventId);
      expect(dead && dead.content.toString('utf8')).toBe(r?.raw);
      expect(dead && dead.properties.headers?.['x-reason']).toBe('gone');
    } finally {
      await conn.close();
    }
    await settled();
    expect(receiver.forRecipient(bob)).toHaveLength(1);
  });

  it('the receiver down for 30 s and back: every missed message arrives, each in exactly one eventId, retried until delivered', { timeout: 120_000 }, async () => {
    receiver.respond = () => 200;
    const alice = uid('alice');
    const offline = [uid('bob'), uid('carol'), uid('dave')];
    const a = await connect(alice);
    const retriedBefore = sample(await scrape(c.persistUrl), 'simplechat_notify_retries_total') ?? 0;
    await receiver.stop();
    const stoppedAt = Date.now();
    const sent: string[] = [];
    // spread over the first 10 s of the outage: the events are at different steps of their backoff
    for (let round = 0; round < 3; round++) {
      for (const user of offline) sent.push((await send(a, { to: user }, `round ${round}`)).msgId);
      await new Promise((r) => setTimeout(r, 5000));
    }
    const left = 30_000 - (Date.now() - stoppedAt);
    if (left > 0) await new Promise((r) => setTimeout(r, left));
    await receiver.start();
    const delivered = () => offline.flatMap((u) => receiver.forRecipient(u));
    await eventually(() => expect(delivered().flatMap((r) => r.event.messages.map((m) => m.msgId)).sort()).toEqual([...sent].sort()), { timeoutMs: 60_000, intervalMs: 250 });
    const events = eventsById(delivered());
    const msgIds = [...events.values()].flatMap((e) => e.msgIds);
    expect(msgIds.sort()).toEqual([...sent].sort());
    expect(new Set(msgIds).size).toBe(sent.length);
    // each event failed at least once while the receiver was away (refused connections)
    expect((sample(await scrape(c.persistUrl), 'simplechat_notify_retries_total') ?? 0) - retriedBefore).toBeGreaterThanOrEqual(events.size);
  });
});

describe('settings', { timeout: 60_000 }, () => {
  it('NOTIFY_INCLUDE_BODY=false: the messages come without their body, everything else as before', async () => {
    await c.restartPersist({ NOTIFY_INCLUDE_BODY: 'false' });
    receiver.respond = () => 200;
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await connect(alice);
    const ack = await send(a, { to: bob }, 'a secret plan');
    const [r] = await eventsFor(bob, 1);
    expect(r?.event.messages).toEqual([{ msgId: ack.msgId, from: alice, to: bob, ts: ack.ts, seq: ack.seq }]);
    expect(r?.raw).not.toContain('a secret plan');
    expect(await verifyWebhook(SECRET, r?.raw ?? '', r?.headers['simplechat-signature'] as string)).toBe(true);
  });
});
