/**
 * The idempotency store against a real Redis: reservations of one tick share
 * one script call, repeats within that call resolve to the first msgId, and a
 * store that cannot be reached fails every reservation of the call with
 * `unavailable` (nothing is acked).
 */
import { describe, expect, it } from 'vitest';
import { createLogger, createRedisConnection, keyBucket, UnavailableError } from '@simplechat/shared';
import { bodyDigest, createIdempotency } from '../src/idempotency';
import { eventually, isolation, redisPerFile } from '../../test/helpers';

const log = createLogger('test', 'silent');
const iso = isolation();
/** the store's own connection, and a plain client for looking at (and breaking) the keys behind its back */
const { conn, admin } = redisPerFile(iso);

/** Storage's position counter, per conversation (an interface of ours: SvPersist's /internal/positions). */
function positionsFake(asked: string[] = []) {
  const reserved = new Map<string, number>();
  return async (blocks: readonly { conversation: string; count: number }[]) =>
    blocks.map(({ conversation, count }) => {
      asked.push(conversation);
      const upTo = (reserved.get(conversation) ?? 0) + count;
      reserved.set(conversation, upTo);
      return upTo;
    });
}

function store(redis = conn.client, keyPrefix = iso.keyPrefix) {
  return createIdempotency({ redis, keyPrefix, windowMs: 60_000, lookupStored: async () => null, reserveBlocks: positionsFake(), log });
}

describe('idempotency reservations', () => {
  it('batches one tick into one script call and keeps the first msgId of a repeated id', async () => {
    await eventually(() => expect(conn.client.isReady).toBe(true));
    const idem = store();
    // An old epoch: misses are new keys, no storage check.
    await idem.ensureEpoch(async () => 0);
    // The script in Redis's cache already (as after any first reservation), so one call is one EVALSHA.
    await idem.reserve('alice', 'warm-up', { msgId: 'W', ts: Date.now(), to: 'bob', digest: 'd0', conversation: 'c' });
    const calls: number[] = [];
    const counting = {
      ...conn.client,
      eval: (s: string, o: { keys: string[]; arguments: string[] }) => (calls.push(o.keys.length), conn.client.eval(s, o)),
      evalSha: (s: string, o: { keys: string[]; arguments: string[] }) => (calls.push(o.keys.length), conn.client.evalSha(s, o)),
    };
    const batched = store(counting);
    const now = Date.now();
    const results = await Promise.all([
      ...Array.from({ length: 300 }, (_, i) => batched.reserve('alice', `c${i}`, { msgId: `M${i}`, ts: now, to: 'bob', digest: 'd1', conversation: 'c' })),
      batched.reserve('alice', 'c7', { msgId: 'DUP', ts: now + 1, to: 'carol', digest: 'd1', conversation: 'c' }),
    ]);
    // the epoch key and 301 reservations with their senders' last-msgId keys and their conversation's counter and block end, one call
    // (those past the end of the conversation's block of positions come again once the next block is there)
    expect(calls[0]).toBe(1 + 4 * 301);
    expect(results.slice(0, 300).every((r, i) => r.first && r.msgId === `M${i}`)).toBe(true);
    expect(results.slice(0, 300).map((r) => r.seq)).toEqual(Array.from({ length: 300 }, (_, i) => i + 2));
    expect(results[300]).toEqual({ msgId: 'M7', ts: now, to: 'bob', digest: 'd1', seq: 9, first: false, sameBody: true });

    const again = await batched.reserve('alice', 'c3', { msgId: 'LATER', ts: now + 5, to: 'dave', digest: 'd2', conversation: 'c' });
    expect(again).toEqual({ msgId: 'M3', ts: now, to: 'bob', digest: 'd1', seq: 5, first: false, sameBody: false });
  });

  it('tells a resend with another body from a retry, and takes a record without a digest as a retry', async () => {
    const idem = store();
    await idem.ensureEpoch(async () => 0);
    const digest = bodyDigest('hello');
    expect(digest).toBe(bodyDigest('hello'));
    expect(digest).not.toBe(bodyDigest('hello!'));
    const now = Date.now();
    expect(await idem.reserve('erin', 'k1', { msgId: 'A1', ts: now, to: 'bob', digest, conversation: 'c' })).toMatchObject({ first: true, sameBody: true });
    expect(await idem.reserve('erin', 'k1', { msgId: 'A2', ts: now, to: 'bob', digest, conversation: 'c' })).toMatchObject({ msgId: 'A1', first: false, sameBody: true });
    expect(await idem.reserve('erin', 'k1', { msgId: 'A3', ts: now, to: 'bob', digest: bodyDigest('other') , conversation: 'c' })).toMatchObject({ msgId: 'A1', first: false, sameBody: false });
    // A record written before digests and positions were kept: msgId|ts|to. Its position is the one storage gave it.
    await admin.set(`${iso.keyPrefix}idem:erin:k2`, `B1|${now}|bob`, { PX: 60_000 });
    await expect(idem.reserve('erin', 'k2', { msgId: 'B2', ts: now, to: 'bob', digest, conversation: 'c' })).rejects.toThrow(/still on its way to storage/);
    const stored = createIdempotency({
      redis: conn.client,
      keyPrefix: iso.keyPrefix,
      windowMs: 60_000,
      lookupStored: async () => ({ msgId: 'B1', from: 'erin', to: 'bob', body: 'hello', ts: now, seq: 7 }),
      reserveBlocks: positionsFake(),
      log,
    });
    expect(await stored.reserve('erin', 'k2', { msgId: 'B2', ts: now, to: 'bob', digest, conversation: 'c' })).toEqual({ msgId: 'B1', ts: now, to: 'bob', digest: '', seq: 7, first: false, sameBody: true });
  });

  it("raises a new msgId that would sort before the sender's last one (another instance's clock behind), clear of ids minted next", async () => {
    const idem = store();
    await idem.ensureEpoch(async () => 0);
    const ts = Date.now();
    const res = (id: string, msgId: string, sender = 'fran') => idem.reserve(sender, id, { msgId, ts, to: 'bob', digest: 'd', conversation: 'c' });
    expect((await res('o1', '01JD00000000000Z000000000Z')).msgId).toBe('01JD00000000000Z000000000Z');
    // minted by an instance whose clock is behind: the last one's first 16 characters + 1 (with
    // carry), then the minted id's own random tail; not the last + 1, which the instance that
    // minted the last one may mint next for someone else
    const raised = await res('o2', '01JC0000000000000000000005');
    expect(raised).toMatchObject({ msgId: '01JD0000000000100000000005', first: true });
    expect(raised.msgId > '01JD00000000000Z000000000Z').toBe(true);
    expect(raised.msgId).not.toBe('01JD00000000000Z0000000010');
    // a retry of o2 keeps the raised msgId; an id from ahead is kept as it is
    expect(await res('o2', '01JE0000000000000000000000')).toMatchObject({ msgId: raised.msgId, first: false });
    expect((await res('o3', '01JE0000000000000000000000')).msgId).toBe('01JE0000000000000000000000');
    // in one script call, in order; another sender is not affected
    const [a, b, other] = await Promise.all([res('o4', '01JA0000000000000000000007'), res('o5', '01JA0000000000000000000008'), res('p1', '01JA0000000000000000000000', 'gus')]);
    expect([a.msgId, b.msgId, other.msgId]).toEqual(['01JE0000000000010000000007', '01JE0000000000020000000008', '01JA0000000000000000000000']);
  });

  it('records no epoch while storage cannot tell the newest stored message, and checks misses against storage until it can', async () => {
    const lookups: string[] = [];
    const idem = createIdempotency({ redis: conn.client, keyPrefix: `${iso.keyPrefix}unknown:`, windowMs: 60_000, lookupStored: async (_s, c) => (lookups.push(c), null), reserveBlocks: positionsFake(), log });
    const epochKey = `${iso.keyPrefix}unknown:idem:epoch`;
    await expect(idem.ensureEpoch(async () => Promise.reject(new Error('SvPersist did not answer')))).rejects.toThrow(/did not answer/);
    expect(await admin.exists(epochKey)).toBe(0);
    // no epoch: the store may have lost keys, so a miss asks storage
    await idem.reserve('hal', 'u1', { msgId: 'U1', ts: Date.now(), to: 'bob', digest: 'd', conversation: 'c' });
    expect(lookups).toEqual(['u1']);
    // storage answers at the next heartbeat: nothing stored for an hour, so misses are new keys
    expect(await idem.ensureEpoch(async () => Date.now() - 3_600_000)).toBe(false);
    await idem.reserve('hal', 'u2', { msgId: 'U2', ts: Date.now(), to: 'bob', digest: 'd', conversation: 'c' });
    expect(lookups).toEqual(['u1']);
  });

  it('while storage fails the checks of a young store, misses go without one for a while instead of each waiting for it', async () => {
    let now = Date.now();
    let failing = true;
    const lookups: string[] = [];
    const idem = createIdempotency({
      redis: conn.client,
      keyPrefix: `${iso.keyPrefix}breaker:`,
      windowMs: 60_000,
      lookupStored: async (_s, c) => {
        lookups.push(c);
        if (failing) throw new Error('SvPersist did not answer');
        return null;
      },
      reserveBlocks: positionsFake(),
      log,
      now: () => now,
    });
    // no epoch recorded: a young store, every miss is checked
    const reserve = (id: string) => idem.reserve('ivy', id, { msgId: `M-${id}`, ts: now, to: 'bob', digest: 'd', conversation: 'c' });
    expect(await reserve('b1')).toMatchObject({ msgId: 'M-b1', first: true });
    expect(await reserve('b2')).toMatchObject({ msgId: 'M-b2', first: true });
    expect(await reserve('b3')).toMatchObject({ msgId: 'M-b3', first: true });
    expect(lookups).toEqual(['b1']);
    // 5 s on, the check is tried again; storage answers, and every miss is checked again
    now += 5_001;
    failing = false;
    await reserve('b4');
    await reserve('b5');
    expect(lookups).toEqual(['b1', 'b4', 'b5']);
  });

  it('fails every reservation of the call with unavailable when Redis cannot be reached', async () => {
    const down = createRedisConnection({ url: 'redis://127.0.0.1:1', log, commandTimeoutMs: 200 });
    try {
      const idem = store(down.client);
      const settled = await Promise.allSettled([idem.reserve('a', '1', { msgId: 'X', ts: 1, to: 'b', digest: 'd', conversation: 'c' }), idem.reserve('a', '2', { msgId: 'Y', ts: 1, to: 'b', digest: 'd', conversation: 'c' })]);
      for (const s of settled) {
        expect(s.status).toBe('rejected');
        expect((s as PromiseRejectedResult).reason).toBeInstanceOf(UnavailableError);
        expect(String((s as PromiseRejectedResult).reason.message)).toMatch(/idempotency store unavailable.*retry with the same id/);
      }
    } finally {
      await down.close();
    }
  });
});

describe('positions', () => {
  it('count up per conversation, give a resend its first position, and never hand one out twice after Redis forgot its counters', async () => {
    await eventually(() => expect(conn.client.isReady).toBe(true));
    const prefix = `${iso.keyPrefix}positions:`;
    const asked: string[] = [];
    const idem = createIdempotency({ redis: conn.client, keyPrefix: prefix, windowMs: 60_000, lookupStored: async () => null, reserveBlocks: positionsFake(asked), log });
    await idem.ensureEpoch(async () => 0);
    const send = (sender: string, id: string, conversation: string) => idem.reserve(sender, id, { msgId: `M-${sender}-${id}`, ts: Date.now(), to: 'x', digest: 'd', conversation });
    // one tick: consecutive positions per conversation, in the order sent
    const first = await Promise.all([send('ann', '1', 'ab'), send('bea', '1', 'ab'), send('ann', '2', 'ac'), send('ann', '3', 'ab')]);
    expect(first.map((r) => r.seq)).toEqual([1, 2, 1, 3]);
    expect(asked.sort()).toEqual(['ab', 'ac']);
    expect((await send('ann', '1', 'ab')).seq).toBe(1);
    // 120 more: the block of 100 is extended ahead of time, with no gap
    const more = [];
    for (let i = 0; i < 120; i++) more.push((await send('ann', `m${i}`, 'ab')).seq);
    expect(more).toEqual(Array.from({ length: 120 }, (_, i) => i + 4));
    // Redis forgets everything: the counter starts again above every position handed out
    const keys = await admin.keys(`${prefix}*`);
    await admin.del(keys);
    await idem.ensureEpoch(async () => 0);
    const after = await send('ann', 'late', 'ab');
    expect(after.seq).toBeGreaterThan(123);
    const seen = new Set([...first.map((r) => `${r.seq}`), ...more.map(String)]);
    expect(seen.has(String(after.seq))).toBe(false);
  });

  it('asks storage for the blocks of many new conversations of one tick in one call', async () => {
    const calls: number[] = [];
    const fake = positionsFake();
    const idem = createIdempotency({
      redis: conn.client,
      keyPrefix: `${iso.keyPrefix}burst:`,
      windowMs: 60_000,
      lookupStored: async () => null,
      reserveBlocks: (blocks) => (calls.push(blocks.length), fake(blocks)),
      log,
    });
    await idem.ensureEpoch(async () => 0);
    const res = await Promise.all(Array.from({ length: 50 }, (_, i) => idem.reserve('kim', `b${i}`, { msgId: `K${i}`, ts: Date.now(), to: 'x', digest: 'd', conversation: `conv-${i}` })));
    expect(res.every((r) => r.seq === 1)).toBe(true);
    expect(calls).toEqual([50]);
  });

  it('a repeat of a key accepted longer than EMPTY_AFTER_MS ago keeps its msgId: the stored position if stored, else a new one, kept for later repeats', async () => {
    let stored: { msgId: string; seq: number } | null = null;
    const asked: string[] = [];
    const idem = createIdempotency({
      redis: conn.client,
      keyPrefix: `${iso.keyPrefix}late:`,
      windowMs: 600_000,
      emptyAfterMs: 60_000,
      lookupStored: async () => (stored ? { msgId: stored.msgId, from: 'lee', to: 'bob', body: 'hi', ts: 1, seq: stored.seq } : null),
      reserveBlocks: positionsFake(asked),
      log,
    });
    await idem.ensureEpoch(async () => 0);
    const old = Date.now() - 120_000;
    await admin.set(`${iso.keyPrefix}late:idem:lee:k1`, `L1|${old}|bob|d|4`, { PX: 60_000 });
    // not stored: a new position, then the same one for the next repeat
    const first = await idem.reserve('lee', 'k1', { msgId: 'L2', ts: Date.now(), to: 'bob', digest: 'd', conversation: 'bob:lee' });
    expect(first).toMatchObject({ msgId: 'L1', ts: old, first: false });
    expect(first.seq).not.toBe(4);
    expect(asked).toEqual(['bob:lee']);
    expect((await idem.reserve('lee', 'k1', { msgId: 'L3', ts: Date.now(), to: 'bob', digest: 'd', conversation: 'bob:lee' })).seq).toBe(first.seq);
    expect(asked).toHaveLength(1);
    // stored (at a position storage chose): that position
    await admin.set(`${iso.keyPrefix}late:idem:lee:k2`, `M1|${old}|bob|d|6`, { PX: 60_000 });
    stored = { msgId: 'M1', seq: 9 };
    expect(await idem.reserve('lee', 'k2', { msgId: 'M2', ts: Date.now(), to: 'bob', digest: 'd', conversation: 'bob:lee' })).toMatchObject({ msgId: 'M1', seq: 9 });
  });
});

describe('on a Redis Cluster (keys tagged by slot, as createRedisConnection does for REDIS_CLUSTER_NODES)', () => {
  // One Redis, but keys named and grouped as on a cluster: a sender's keys and a conversation's
  // are in different slots, so a reservation takes its three steps.
  const asCluster = { ...conn.client, tag: (group: string) => `{${group}}`, slotOf: (key: string) => keyBucket(key, 16384) };
  const prefix = `${iso.keyPrefix}cluster:`;
  const idemKey = (sender: string, id: string) => `${prefix}idem:{s${keyBucket(sender, 128)}}${sender}:${id}`;

  it('reserves in three steps where the sender and the conversation are in different slots, with the same answers', async () => {
    const asked: string[] = [];
    const idem = createIdempotency({ redis: asCluster, keyPrefix: prefix, windowMs: 60_000, lookupStored: async () => null, reserveBlocks: positionsFake(asked), log });
    await idem.ensureEpoch(async () => 0);
    const send = (sender: string, id: string, conversation: string, msgId = `M-${sender}-${id}`) => idem.reserve(sender, id, { msgId, ts: 1, to: 'x', digest: 'd', conversation });
    const res = await Promise.all([send('ann', '1', 'ab'), send('bea', '1', 'ab'), send('ann', '2', 'ac'), send('ann', '3', 'ab'), send('ann', '1', 'ab', 'OTHER')]);
    expect(res.map((r) => r.seq)).toEqual([1, 2, 1, 3, 1]);
    expect(res[4]).toMatchObject({ msgId: 'M-ann-1', first: false, sameBody: true });
    expect(res.slice(0, 4).every((r) => r.first)).toBe(true);
    expect(await admin.get(idemKey('ann', '1'))).toBe('M-ann-1|1|x|d|1');
    expect((await send('ann', '1', 'ab', 'LATER')).seq).toBe(1);
    expect(asked.sort()).toEqual(['ab', 'ac']);
  });

  it('a repeat that finds a record whose position is pending (its first attempt died half-way) completes it, and later repeats get that', async () => {
    const idem = createIdempotency({ redis: asCluster, keyPrefix: prefix, windowMs: 60_000, lookupStored: async () => null, reserveBlocks: positionsFake(), log });
    await idem.ensureEpoch(async () => 0);
    const now = Date.now();
    await admin.set(idemKey('cat', 'k1'), `P1|${now}|bob|d|?`, { PX: 60_000 });
    const repeat = await idem.reserve('cat', 'k1', { msgId: 'P2', ts: now + 5, to: 'bob', digest: 'd', conversation: 'bob:cat' });
    expect(repeat).toEqual({ msgId: 'P1', ts: now, to: 'bob', digest: 'd', seq: 1, first: false, sameBody: true });
    expect(await admin.get(idemKey('cat', 'k1'))).toBe(`P1|${now}|bob|d|1`);
    expect(await idem.reserve('cat', 'k1', { msgId: 'P3', ts: now + 9, to: 'bob', digest: 'e', conversation: 'bob:cat' })).toEqual({ ...repeat, sameBody: false });
  });
});

describe('a failover (keys found on another master than the one that recorded them)', () => {
  it('makes the idempotency store young again, so that misses are checked against storage', async () => {
    const lookups: string[] = [];
    const prefix = `${iso.keyPrefix}failover:`;
    const idem = createIdempotency({ redis: conn.client, keyPrefix: prefix, windowMs: 60_000, lookupStored: async (_s, c) => (lookups.push(c), null), reserveBlocks: positionsFake(), log });
    await idem.ensureEpoch(async () => 0);
    await idem.reserve('dan', 'a', { msgId: 'D1', ts: Date.now(), to: 'bob', digest: 'd', conversation: 'bob:dan' });
    expect(lookups).toEqual([]);
    // the epoch as another master recorded it: this one may have lost what that one had
    await admin.set(`${prefix}idem:epoch`, '0|0123456789abcdef0123456789abcdef01234567');
    await idem.reserve('dan', 'b', { msgId: 'D2', ts: Date.now(), to: 'bob', digest: 'd', conversation: 'bob:dan' });
    await idem.reserve('dan', 'c', { msgId: 'D3', ts: Date.now(), to: 'bob', digest: 'd', conversation: 'bob:dan' });
    expect(lookups).toEqual(['b', 'c']);
    expect(await idem.ensureEpoch(async () => 0)).toBe(true);
  });

  it('drops a conversation counter another master recorded: the next block comes from storage, no position is handed out twice', async () => {
    const asked: string[] = [];
    const prefix = `${iso.keyPrefix}failover-pos:`;
    const idem = createIdempotency({ redis: conn.client, keyPrefix: prefix, windowMs: 60_000, lookupStored: async () => null, reserveBlocks: positionsFake(asked), log });
    await idem.ensureEpoch(async () => 0);
    const send = (id: string) => idem.reserve('eve', id, { msgId: `E-${id}`, ts: Date.now(), to: 'bob', digest: 'd', conversation: 'bob:eve' });
    expect([(await send('1')).seq, (await send('2')).seq, (await send('3')).seq]).toEqual([1, 2, 3]);
    // the counter went back to 1 on a master that had not received the last two positions
    await admin.set(`${prefix}pos:bob:eve`, '1');
    await admin.set(`${prefix}pos-end:bob:eve`, '100|0123456789abcdef0123456789abcdef01234567');
    expect((await send('4')).seq).toBe(101);
    expect(asked).toEqual(['bob:eve', 'bob:eve']);
  });
});
