/**
 * The room rate limit across gateways (room-rate.ts), against the real Redis:
 * limiters standing for several gateways share one bucket per room, a busy
 * room costs a gateway one Redis call per grant, not per send, and a room
 * whose bucket is empty is refused without asking Redis again.
 */
import { describe, expect, it } from 'vitest';
import { createRoomRateLimiter } from '../src/room-rate';
import { isolation, redisPerFile } from '../../test/helpers';

const iso = isolation();
const { conn } = redisPerFile(iso);

/** the limiter of one gateway, counting its Redis calls */
function gateway(ratePerSec: number) {
  const calls = { n: 0 };
  const redis = {
    tag: (g: string) => conn.client.tag(g),
    eval(...a: Parameters<typeof conn.client.eval>) {
      calls.n++;
      return conn.client.eval(...a);
    },
    evalSha(...a: Parameters<typeof conn.client.evalSha>) {
      calls.n++;
      return conn.client.evalSha(...a);
    },
  };
  return { limiter: createRoomRateLimiter({ redis, keyPrefix: iso.keyPrefix, ratePerSec }), calls };
}

const admitted = (waits: number[]) => waits.filter((w) => w === 0).length;

describe('room rate limit across gateways', () => {
  it('three gateways together take the burst and the rate, not three times them', async () => {
    const room = 'r_busy';
    const gateways = [gateway(10), gateway(10), gateway(10)];
    const started = performance.now();
    const waits = await Promise.all(gateways.flatMap(({ limiter }) => Array.from({ length: 20 }, () => limiter.take(room))));
    const seconds = (performance.now() - started) / 1000;
    // A burst of 10, then 10 a second; three gateways of their own would have taken 30.
    expect(admitted(waits)).toBeGreaterThanOrEqual(10);
    expect(admitted(waits)).toBeLessThanOrEqual(10 + Math.ceil(10 * seconds));
    for (const w of waits.filter((x) => x > 0)) expect(w).toBeLessThanOrEqual(1000);
    for (const { limiter } of gateways) limiter.close();
  });

  it('a busy room costs a gateway one Redis call per grant of a tenth of the limit, and none while it is full', async () => {
    const room = 'r_chatty';
    const { limiter, calls } = gateway(1000);
    const waits: number[] = [];
    for (let i = 0; i < 300; i++) waits.push(await limiter.take(room));
    expect(admitted(waits)).toBe(300);
    // 100 tokens a grant (the script's first use may take a second call to load it)
    expect(calls.n).toBeGreaterThanOrEqual(3);
    expect(calls.n).toBeLessThanOrEqual(4);

    // Another gateway empties the room's bucket: this one is then refused, and asks Redis at most
    // twice for 500 sends (a grant, then what is left), not once per send.
    const other = gateway(1000);
    const theirs = await Promise.all(Array.from({ length: 1500 }, () => other.limiter.take(room)));
    expect(theirs.some((w) => w > 0)).toBe(true);
    const before = calls.n;
    const mine = await Promise.all(Array.from({ length: 500 }, () => limiter.take(room)));
    expect(mine.some((w) => w > 0)).toBe(true);
    expect(calls.n - before).toBeLessThanOrEqual(2);
    limiter.close();
    other.limiter.close();
  });

  it('rooms do not share a bucket', async () => {
    const { limiter } = gateway(2);
    const [a, b] = ['r_a', 'r_b'];
    expect(await Promise.all([limiter.take(a), limiter.take(a), limiter.take(a)]).then(admitted)).toBe(2);
    expect(await Promise.all([limiter.take(b), limiter.take(b)]).then(admitted)).toBe(2);
    limiter.close();
  });
});
