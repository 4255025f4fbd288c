import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lookupResponse, heartbeatResponse, presenceResponse } from '@simplechat/shared';
import { eventually } from '../../test/helpers';
import { startDiscover, connectAdmin, keysUnder, deleteKeysUnder, type Harness, type AdminRedis, type Api } from './harness';

let h: Harness;
let admin: AdminRedis;
let api: Api;
let seq = 0;
/** A fresh instance id per test, so tests in this file never see each other's claims. */
const nextInstance = (name: string) => `${name}-${++seq}`;
const urlOf = (id: string) => `http://127.0.0.1:9/${id}`;

beforeAll(async () => {
  // a lease far longer than any stall of a busy test runner: only the 'leases' tests below wait for one to lapse
  h = await startDiscover({ leaseMs: 10_000, sweepIntervalMs: 100 });
  api = h.api;
  admin = await connectAdmin();
  await eventually(async () => expect((await api('GET', '/health')).status).toBe(200));
});

afterAll(async () => {
  await h?.close();
  if (admin) {
    await deleteKeysUnder(admin, h.keyPrefix);
    await admin.close();
  }
});

async function heartbeat(id: string, on: Harness = h) {
  const res = await on.api('PUT', `/internal/instances/${id}`, { url: urlOf(id) });
  expect(res.status).toBe(200);
  return heartbeatResponse.parse(res.body);
}

async function claim(id: string, add: string[], remove: string[] = [], on: Harness = h) {
  const res = await on.api('POST', '/internal/claims', { instanceId: id, url: urlOf(id), add, remove });
  expect(res.status).toBe(204);
}

async function lookup(users: string[], on: Harness = h) {
  const res = await on.api('POST', '/internal/lookup', { users });
  expect(res.status).toBe(200);
  const { users: found } = lookupResponse.parse(res.body);
  // instance order within a user is not part of the contract
  return Object.fromEntries(Object.entries(found).map(([u, refs]) => [u, [...refs].sort((a, b) => a.instanceId.localeCompare(b.instanceId))]));
}

const ref = (id: string) => ({ instanceId: id, url: urlOf(id) });

async function presence(users: string[], on: Harness = h) {
  const res = await on.api('POST', '/internal/presence', { users });
  expect(res.status).toBe(200);
  return presenceResponse.parse(res.body).users;
}

describe('claims and lookups', () => {
  it('a claimed user is found on the claiming instance, by lookup and by GET /internal/users/:userId', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    await claim(a, ['alice1']);
    expect(await lookup(['alice1'])).toEqual({ alice1: [ref(a)] });
    const res = await api('GET', '/internal/users/alice1');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ userId: 'alice1', instances: [ref(a)] });
  });

  it('a batch lookup answers every requested user: all instances claiming it, or [] when it is nowhere', async () => {
    const a = nextInstance('ws-a');
    const b = nextInstance('ws-b');
    await Promise.all([heartbeat(a), heartbeat(b)]);
    await claim(a, ['alice2', 'bob2']);
    await claim(b, ['bob2', 'carol2']);
    expect(await lookup(['alice2', 'bob2', 'carol2', 'nobody2'])).toEqual({
      alice2: [ref(a)],
      bob2: [ref(a), ref(b)],
      carol2: [ref(b)],
      nobody2: [],
    });
    const res = await api('GET', '/internal/users/nobody2');
    expect(res.body).toEqual({ userId: 'nobody2', instances: [] });
  });

  it('a user id that is also an Object.prototype key is answered like any other', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    await claim(a, ['__proto__', 'constructor']);
    const res = await api('POST', '/internal/lookup', { users: ['__proto__', 'constructor'] });
    expect(res.status).toBe(200);
    expect(JSON.parse(JSON.stringify(res.body))).toEqual(JSON.parse(`{"users":{"__proto__":[${JSON.stringify(ref(a))}],"constructor":[${JSON.stringify(ref(a))}]}}`));
  });

  it('a release removes only the releasing instance\'s claim, never another instance\'s', async () => {
    const a = nextInstance('ws-a');
    const b = nextInstance('ws-b');
    await Promise.all([heartbeat(a), heartbeat(b)]);
    await claim(a, ['dave3', 'erin3']);
    await claim(b, ['dave3']);
    await claim(a, [], ['dave3']);
    expect(await lookup(['dave3', 'erin3'])).toEqual({ dave3: [ref(b)], erin3: [ref(a)] });
    // releasing a user the instance never claimed changes nothing
    await claim(a, [], ['erin3-x', 'dave3']);
    expect(await lookup(['dave3'])).toEqual({ dave3: [ref(b)] });
    expect(await admin.sMembers(`${h.keyPrefix}inst:${a}:users`)).toEqual(['erin3']);
  });

  it('a user both added and removed in one request stays claimed (removals apply first)', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    await claim(a, ['fay4']);
    await claim(a, ['fay4'], ['fay4']);
    expect(await lookup(['fay4'])).toEqual({ fay4: [ref(a)] });
  });

  it('replacing the claim set drops the claims not listed, adds the new ones and leaves other instances alone', async () => {
    const a = nextInstance('ws-a');
    const b = nextInstance('ws-b');
    await Promise.all([heartbeat(a), heartbeat(b)]);
    await claim(a, ['gus5', 'hal5', 'ivy5']);
    await claim(b, ['gus5']);
    const res = await api('PUT', `/internal/instances/${a}/claims`, { url: urlOf(a), users: ['hal5', 'jon5'] });
    expect(res.status).toBe(204);
    expect(await lookup(['gus5', 'hal5', 'ivy5', 'jon5'])).toEqual({ gus5: [ref(b)], hal5: [ref(a)], ivy5: [], jon5: [ref(a)] });
    expect((await admin.sMembers(`${h.keyPrefix}inst:${a}:users`)).sort()).toEqual(['hal5', 'jon5']);

    const emptied = await api('PUT', `/internal/instances/${a}/claims`, { url: urlOf(a), users: [] });
    expect(emptied.status).toBe(204);
    expect(await lookup(['hal5', 'jon5', 'gus5'])).toEqual({ hal5: [], jon5: [], gus5: [ref(b)] });
  });

  it('a batch of 10000 users is claimed, looked up and released in one request each', async () => {
    const a = nextInstance('ws-big');
    await heartbeat(a);
    const users = Array.from({ length: 10_000 }, (_, i) => `bulk-user-${i}`);
    await claim(a, users);
    const found = await lookup(users);
    expect(Object.keys(found)).toHaveLength(users.length);
    expect(Object.values(found).every((refs) => refs.length === 1 && refs[0]?.instanceId === a)).toBe(true);
    await claim(a, [], users);
    const after = await lookup(users);
    expect(Object.values(after).every((refs) => refs.length === 0)).toBe(true);
    expect(await admin.exists(`${h.keyPrefix}user:bulk-user-0`)).toBe(0);
  });
});

describe('leases', () => {
  // a copy of its own with a short lease, so a lapse is quick to wait for
  let short: Harness;
  beforeAll(async () => {
    short = await startDiscover({ leaseMs: 1_000, sweepIntervalMs: 100 });
    await eventually(async () => expect((await short.api('GET', '/health')).status).toBe(200));
  });
  afterAll(async () => {
    await short?.close();
    if (short) await deleteKeysUnder(admin, short.keyPrefix);
  });

  it('an instance that stops heartbeating stops being returned within the lease, and the sweeper removes its keys', async () => {
    const dead = nextInstance('ws-dead');
    const live = nextInstance('ws-live');
    // The live instance heartbeats through a copy on the same keys whose lease is 30 s: it stays
    // live however slow this machine is, while the dead one's 1 s lease lapses.
    const long = await startDiscover({ keyPrefix: short.keyPrefix, leaseMs: 30_000, sweepIntervalMs: 600_000 });
    try {
      await eventually(async () => expect((await long.api('GET', '/health')).status).toBe(200));
      await Promise.all([heartbeat(dead, short), heartbeat(live, long)]);
      await claim(dead, ['kim6', 'lou6'], [], short);
      await claim(live, ['kim6'], [], short);
      expect(await lookup(['kim6', 'lou6'], short)).toEqual({ kim6: [ref(dead), ref(live)].sort((x, y) => x.instanceId.localeCompare(y.instanceId)), lou6: [ref(dead)] });

      await eventually(async () => expect(await lookup(['kim6', 'lou6'], short)).toEqual({ kim6: [ref(live)], lou6: [] }));
      // what bounds how long a dead instance is returned is its lease's TTL, checked in the next test

      await eventually(async () => {
        expect(await admin.sIsMember(`${short.keyPrefix}instances`, dead)).toBe(0);
        expect(await admin.exists([`${short.keyPrefix}lease:${dead}`, `${short.keyPrefix}inst:${dead}:users`, `${short.keyPrefix}user:lou6`])).toBe(0);
        expect(await admin.sMembers(`${short.keyPrefix}user:kim6`)).toEqual([live]);
      });
      // the sweeper kept the live instance and its claims
      expect(await admin.sIsMember(`${short.keyPrefix}instances`, live)).toBe(1);
      expect(await lookup(['kim6'], short)).toEqual({ kim6: [ref(live)] });
    } finally {
      await long.close();
    }
  });

  it('a heartbeat answers renewed=false for a new instance, true while the lease holds, and false once it lapsed', async () => {
    const a = nextInstance('ws-a');
    expect(await heartbeat(a, short)).toEqual({ leaseMs: short.leaseMs, renewed: false, hints: [] });
    expect((await heartbeat(a, short)).renewed).toBe(true);
    const pttl = await admin.pTTL(`${short.keyPrefix}lease:${a}`);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(short.leaseMs);
    await eventually(async () => expect(await admin.exists(`${short.keyPrefix}lease:${a}`)).toBe(0));
    expect((await heartbeat(a, short)).renewed).toBe(false);
    expect((await heartbeat(a, short)).renewed).toBe(true);
  });

  it("after a failover that may have lost writes (a master with another replication id) the instances re-assert: its own keys' master at its next heartbeat, a users' bucket's at every instance's", async () => {
    const [a, b] = [nextInstance('ws-a'), nextInstance('ws-b')];
    await heartbeat(a);
    await heartbeat(b);
    await claim(a, ['oli8']);
    expect((await heartbeat(a)).renewed).toBe(true);
    // the instance's keys were recorded by another master
    await admin.set(`${h.keyPrefix}inst-replid:${a}`, '0123456789abcdef0123456789abcdef01234567');
    expect((await heartbeat(a)).renewed).toBe(false);
    expect((await heartbeat(a)).renewed).toBe(true);
    // a users' bucket was (the sweeper notices within a sweep interval): every instance re-asserts once
    await admin.set(`${h.keyPrefix}users-replid:`, '0123456789abcdef0123456789abcdef01234567');
    await eventually(async () => expect(await admin.exists(`${h.keyPrefix}reassert:${b}`)).toBe(1));
    expect((await heartbeat(a)).renewed).toBe(false);
    expect((await heartbeat(b)).renewed).toBe(false);
    expect([(await heartbeat(a)).renewed, (await heartbeat(b)).renewed]).toEqual([true, true]);
    // a re-assert adds every claim again, also one the failover lost
    await admin.sRem(`${h.keyPrefix}user:oli8`, a);
    const res = await api('PUT', `/internal/instances/${a}/claims`, { url: urlOf(a), users: ['oli8'] });
    expect(res.status).toBe(204);
    expect(await lookup(['oli8'])).toEqual({ oli8: [ref(a)] });
  });

  it('after Redis loses its keys a heartbeat answers renewed=false, and the re-asserted claims are found again', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    await claim(a, ['max7', 'ned7']);
    expect((await heartbeat(a)).renewed).toBe(true);
    const ownKeys = await keysUnder(admin, h.keyPrefix);
    expect(ownKeys).toContain(`${h.keyPrefix}lease:${a}`);
    await admin.del(ownKeys); // what a Redis restart without persistence does

    expect(await lookup(['max7', 'ned7'])).toEqual({ max7: [], ned7: [] });
    expect((await heartbeat(a)).renewed).toBe(false);
    const res = await api('PUT', `/internal/instances/${a}/claims`, { url: urlOf(a), users: ['max7', 'ned7'] });
    expect(res.status).toBe(204);
    expect(await lookup(['max7', 'ned7'])).toEqual({ max7: [ref(a)], ned7: [ref(a)] });
    expect((await heartbeat(a)).renewed).toBe(true);
  });

  it('claims kept while the lease is missing are not returned until the instance heartbeats again', async () => {
    // a copy of its own whose sweeper never fires here: a sweep between the claim and the heartbeat
    // would (rightly) remove the claim of a lease-less instance, which is not what this test is about
    const quiet = await startDiscover({ leaseMs: 30_000, sweepIntervalMs: 600_000 });
    try {
      await eventually(async () => expect((await quiet.api('GET', '/health')).status).toBe(200));
      const a = nextInstance('ws-a');
      await claim(a, ['oli8'], [], quiet);
      expect(await lookup(['oli8'], quiet)).toEqual({ oli8: [] });
      expect((await heartbeat(a, quiet)).renewed).toBe(false);
      expect(await lookup(['oli8'], quiet)).toEqual({ oli8: [ref(a)] });
    } finally {
      await quiet.close();
      await deleteKeysUnder(admin, quiet.keyPrefix);
    }
  });

  it('several SvDiscover copies sweeping at once remove a dead instance exactly and keep the live ones', async () => {
    // two copies on their own prefix whose timers never fire here: every sweep is the explicit,
    // concurrent one below; the dead instance heartbeats through the first (1 s lease), the live
    // one through the second (30 s lease, so a slow machine does not let it lapse before the sweeps)
    const first = await startDiscover({ leaseMs: 1_000, sweepIntervalMs: 600_000 });
    const second = await startDiscover({ keyPrefix: first.keyPrefix, leaseMs: 30_000, sweepIntervalMs: 600_000 });
    const prefix = first.keyPrefix;
    try {
      await eventually(async () => {
        expect((await first.api('GET', '/health')).status).toBe(200);
        expect((await second.api('GET', '/health')).status).toBe(200);
      });
      const dead = nextInstance('ws-dead');
      const live = nextInstance('ws-live');
      const users = Array.from({ length: 500 }, (_, i) => `swept-${i}`);
      expect((await first.api('PUT', `/internal/instances/${dead}`, { url: urlOf(dead) })).status).toBe(200);
      expect((await first.api('POST', '/internal/claims', { instanceId: dead, url: urlOf(dead), add: users })).status).toBe(204);
      await eventually(async () => expect(await admin.exists(`${prefix}lease:${dead}`)).toBe(0));
      expect((await second.api('PUT', `/internal/instances/${live}`, { url: urlOf(live) })).status).toBe(200);
      expect((await second.api('POST', '/internal/claims', { instanceId: live, url: urlOf(live), add: users.slice(0, 10) })).status).toBe(204);

      const sweeps = await Promise.all([first.service.registry.sweep(), second.service.registry.sweep(), first.service.registry.sweep(), second.service.registry.sweep()]);
      expect(sweeps.flat()).toContain(dead);
      expect(sweeps.flat()).not.toContain(live);
      expect(await admin.exists(`${prefix}inst:${dead}:users`)).toBe(0);
      expect(await admin.sIsMember(`${prefix}instances`, dead)).toBe(0);
      expect(await admin.sIsMember(`${prefix}instances`, live)).toBe(1);
      const { users: found } = lookupResponse.parse((await second.api('POST', '/internal/lookup', { users })).body);
      expect(Object.entries(found).filter(([, refs]) => refs.length > 0).map(([u]) => u).sort()).toEqual(users.slice(0, 10).sort());
      expect(await admin.sMembers(`${prefix}user:swept-0`)).toEqual([live]);
      expect(await admin.exists(`${prefix}user:swept-499`)).toBe(0);
      // a later sweep finds nothing more to do
      expect(await first.service.registry.sweep()).toEqual([]);
    } finally {
      await second.close();
      await first.close();
      await deleteKeysUnder(admin, prefix);
    }
  });
});

describe('hints and goodbye', () => {
  it('hints are delivered once, on the next heartbeat of that instance only', async () => {
    const a = nextInstance('ws-a');
    const b = nextInstance('ws-b');
    await Promise.all([heartbeat(a), heartbeat(b)]);
    const res = await api('POST', '/internal/hints', { instanceId: a, users: ['pam9', 'quin9'] });
    expect(res.status).toBe(204);
    const pttl = await admin.pTTL(`${h.keyPrefix}hints:${a}`);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(h.leaseMs * 3);
    expect((await heartbeat(b)).hints).toEqual([]);
    const first = await heartbeat(a);
    expect([...first.hints].sort()).toEqual(['pam9', 'quin9']);
    expect((await heartbeat(a)).hints).toEqual([]);
  });

  it('DELETE (goodbye) drops the lease, every claim and the hints of that instance, and nothing of another', async () => {
    const a = nextInstance('ws-a');
    const b = nextInstance('ws-b');
    await Promise.all([heartbeat(a), heartbeat(b)]);
    await claim(a, ['rex10', 'sue10']);
    await claim(b, ['rex10']);
    await api('POST', '/internal/hints', { instanceId: a, users: ['rex10'] });
    const res = await api('DELETE', `/internal/instances/${a}`);
    expect(res.status).toBe(204);
    expect(await lookup(['rex10', 'sue10'])).toEqual({ rex10: [ref(b)], sue10: [] });
    const left = await keysUnder(admin, h.keyPrefix);
    expect(left.filter((k) => k.includes(`:${a}`))).toEqual([]);
    expect(await admin.sIsMember(`${h.keyPrefix}instances`, a)).toBe(0);
    expect(await admin.exists(`${h.keyPrefix}user:sue10`)).toBe(0);
    expect((await heartbeat(b)).renewed).toBe(true);
    // a goodbye from an unknown instance is harmless
    expect((await api('DELETE', '/internal/instances/never-seen')).status).toBe(204);
  });
});

describe('presence', () => {
  it('a user is online while any live instance claims it; its last release records lastSeen', async () => {
    const a = nextInstance('ws-a');
    const b = nextInstance('ws-b');
    await Promise.all([heartbeat(a), heartbeat(b)]);
    expect(await presence(['pia11'])).toEqual({ pia11: { online: false } });
    await claim(a, ['pia11']);
    await claim(b, ['pia11']);
    expect(await presence(['pia11'])).toEqual({ pia11: { online: true } });
    await claim(a, [], ['pia11']);
    // still claimed by b: online, and no lastSeen written yet
    expect(await presence(['pia11'])).toEqual({ pia11: { online: true } });
    expect(await admin.exists(`${h.keyPrefix}seen:pia11`)).toBe(0);
    const before = Date.now();
    await claim(b, [], ['pia11']);
    const after = Date.now();
    const p = (await presence(['pia11'])).pia11;
    expect(p?.online).toBe(false);
    const lastSeen = p && !p.online ? p.lastSeen : undefined;
    // Redis's clock and this one are the same host's
    expect(lastSeen).toBeGreaterThanOrEqual(before - 5);
    expect(lastSeen).toBeLessThanOrEqual(after + 5);
  });

  it('goodbye and a replaced claim set record lastSeen for the users they release', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    await claim(a, ['quin11', 'ray11']);
    await api('PUT', `/internal/instances/${a}/claims`, { url: urlOf(a), users: ['ray11'] });
    expect(await presence(['quin11', 'ray11'])).toMatchObject({ quin11: { online: false, lastSeen: expect.any(Number) }, ray11: { online: true } });
    expect((await api('DELETE', `/internal/instances/${a}`)).status).toBe(204);
    expect(await presence(['ray11'])).toMatchObject({ ray11: { online: false, lastSeen: expect.any(Number) } });
  });
});
