/**
 * Publishing under load: with every confirm channel busy, accepted messages
 * wait for the next free channel and go out together, so a burst costs far
 * fewer broker publishes (and confirms) than messages, and every message of
 * the burst is still acked and stored exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { eventually } from '../../test/helpers';
import { sample, scrape } from '../../test/metrics';

let c: TestCluster;
beforeAll(async () => {
  c = await startCluster({ wsCount: 1, wsEnv: { PUBLISH_CHANNELS: '1', RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' } });
});
afterAll(async () => {
  await c?.close();
});

describe('publisher', () => {
  it('a burst of sends shares few publishes when the channel is busy; all acked and stored once', async () => {
    const senders = await Promise.all(Array.from({ length: 10 }, (_, i) => c.connect(uid(`burst${i}`))));
    const bob = uid('bob');
    const before = await scrape(c.httpUrl());
    const batches0 = sample(before, 'simplechat_publish_confirms_total') ?? 0;
    const messages0 = sample(before, 'simplechat_published_messages_total') ?? 0;
    const answers = await Promise.all(
      senders.flatMap((s, i) => Array.from({ length: 100 }, (_, j) => s.request({ type: 'send', id: `b${i}-${j}`, to: bob, body: `m${i}-${j}` }, 20_000))),
    );
    expect(answers.every((a) => a.type === 'ack')).toBe(true);
    const after = await scrape(c.httpUrl());
    const batches = (sample(after, 'simplechat_publish_confirms_total') ?? 0) - batches0;
    const messages = (sample(after, 'simplechat_published_messages_total') ?? 0) - messages0;
    console.log(`publisher: 1,000 messages in ${batches} publishes`);
    expect(messages).toBe(1000);
    // one channel, one batch in flight: the burst needs far fewer publishes than messages
    expect(batches).toBeLessThan(200);
    await eventually(async () => expect((await c.db.query('SELECT count(DISTINCT client_id)::int AS d, count(*)::int AS n FROM messages WHERE recipient = $1', [bob])).rows[0]).toEqual({ d: 1000, n: 1000 }), { timeoutMs: 20_000 });
  }, 60_000);

  it('PUBLISH_INTERVAL_MS spaces publishes even with every channel free: sends in between wait and share a publish', async () => {
    await c.addWs({ PUBLISH_INTERVAL_MS: '100', PUBLISH_CHANNELS: '4', INSTANCE_ID: 'ws-paced' });
    const paced = 1;
    const senders = await Promise.all(Array.from({ length: 6 }, (_, i) => c.connect(uid(`paced${i}`), paced)));
    const before = await scrape(c.httpUrl(paced));
    const batches0 = sample(before, 'simplechat_publish_confirms_total') ?? 0;
    const bob = uid('bob');
    // The first send finds the publish pacer idle and goes out at once; the others are sent once it
    // is acked, with every channel free: they wait for the interval and share a publish.
    const started = performance.now();
    const firstAck = await (senders[0] as (typeof senders)[number]).request({ type: 'send', id: 'p0', to: bob, body: 'first' });
    const restAcks = await Promise.all(senders.slice(1).map((s, i) => s.request({ type: 'send', id: `p${i + 1}`, to: bob, body: `next ${i}` })));
    const restAt = performance.now() - started;
    expect([firstAck, ...restAcks].every((a) => a.type === 'ack')).toBe(true);
    const batches = (sample(await scrape(c.httpUrl(paced)), 'simplechat_publish_confirms_total') ?? 0) - batches0;
    expect(batches).toBeLessThan(6);
    // The first publish left after `started`, the next one no sooner than 100 ms after it.
    expect(restAt).toBeGreaterThanOrEqual(100);
  }, 30_000);
});
