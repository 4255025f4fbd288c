/**
 * The change notifications SvDiscover publishes on Redis pub/sub, read by a
 * plain subscriber: what each change announces, and that nothing else is.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discoveryChangesChannel, discoveryBeatChannel, parseDiscoveryChange, MAX_USERS_PER_CHANGE, type DiscoveryChange } from '@simplechat/shared';
import { eventually } from '../../test/helpers';
import { startDiscover, connectAdmin, deleteKeysUnder, type Harness, type AdminRedis, type Api } from './harness';

let h: Harness;
let admin: AdminRedis;
let sub: AdminRedis;
let api: Api;
let seq = 0;
const nextInstance = (name: string) => `${name}-${++seq}`;
const urlOf = (id: string) => `http://127.0.0.1:9/${id}`;
/** every notification received, in order, as read by the gateways' parser */
const received: (DiscoveryChange | undefined)[] = [];
const beats: string[] = [];

beforeAll(async () => {
  // no sweeps but the explicit ones: a claim without a lease must stay until the test heartbeats
  h = await startDiscover({ leaseMs: 2_000, sweepIntervalMs: 600_000 });
  api = h.api;
  admin = await connectAdmin();
  sub = admin.duplicate();
  sub.on('error', () => undefined);
  await sub.connect();
  await sub.subscribe(discoveryChangesChannel(h.keyPrefix), (message) => received.push(parseDiscoveryChange(message)));
  await sub.pSubscribe(discoveryBeatChannel(h.keyPrefix, '*'), (_message, channel) => beats.push(channel));
  await eventually(async () => expect((await api('GET', '/health')).status).toBe(200));
});

afterAll(async () => {
  await sub?.close();
  await h?.close();
  if (admin) {
    await deleteKeysUnder(admin, h.keyPrefix);
    await admin.close();
  }
});

async function heartbeat(id: string, url = urlOf(id)) {
  expect((await api('PUT', `/internal/instances/${id}`, { url })).status).toBe(200);
}
async function claim(id: string, add: string[], remove: string[] = []) {
  expect((await api('POST', '/internal/claims', { instanceId: id, url: urlOf(id), add, remove })).status).toBe(204);
}
/**
 * Runs `change` and returns the notifications it caused, up to a fence published after it.
 * Every change a test makes goes through here, so none arrives late into the next one's window.
 */
async function notificationsOf(change: () => Promise<void>): Promise<(DiscoveryChange | undefined)[]> {
  const fence = `fence-${++seq}`;
  const from = received.length;
  await change();
  await admin.publish(discoveryChangesChannel(h.keyPrefix), `users\n${fence}`);
  const all = await eventually(() => {
    const got = received.slice(from);
    expect(got).toContainEqual({ kind: 'users', users: [fence] });
    return got;
  });
  return all.filter((c) => !(c?.kind === 'users' && c.users.includes(fence)));
}

describe('change notifications', () => {
  it('claims and releases announce exactly the users whose set of instances changed', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    expect(await notificationsOf(() => claim(a, ['ann1', 'bea1']))).toEqual([{ kind: 'users', users: ['ann1', 'bea1'] }]);
    // claiming again, or releasing a user never claimed, changes nothing
    expect(await notificationsOf(() => claim(a, ['ann1'], ['cid1']))).toEqual([]);
    expect(await notificationsOf(() => claim(a, [], ['ann1']))).toEqual([{ kind: 'users', users: ['ann1'] }]);
  });

  it('replacing the claim set announces the users dropped and added, not those kept', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    await notificationsOf(() => claim(a, ['dan2', 'eve2']));
    const got = await notificationsOf(async () => {
      expect((await api('PUT', `/internal/instances/${a}/claims`, { url: urlOf(a), users: ['eve2', 'fay2'] })).status).toBe(204);
    });
    expect(got).toHaveLength(1);
    expect(got[0]?.kind === 'users' && [...got[0].users].sort()).toEqual(['dan2', 'fay2']);
  });

  it(`a large change is announced in notifications of at most ${MAX_USERS_PER_CHANGE} users`, async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    const users = Array.from({ length: 2 * MAX_USERS_PER_CHANGE + 500 }, (_, i) => `many3-${i}`);
    const got = await notificationsOf(() => claim(a, users));
    expect(got.map((c) => (c?.kind === 'users' ? c.users.length : -1))).toEqual([MAX_USERS_PER_CHANGE, MAX_USERS_PER_CHANGE, 500]);
    expect(got.flatMap((c) => (c?.kind === 'users' ? c.users : []))).toEqual(users);
  });

  it('a goodbye announces the instance; a goodbye of an instance without claims announces nothing', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    await notificationsOf(() => claim(a, ['gus4']));
    expect(await notificationsOf(async () => void (await api('DELETE', `/internal/instances/${a}`)))).toEqual([{ kind: 'instance', instanceId: a }]);
    const empty = nextInstance('ws-empty');
    await heartbeat(empty);
    expect(await notificationsOf(async () => void (await api('DELETE', `/internal/instances/${empty}`)))).toEqual([]);
  });

  it('sweeping an instance whose lease lapsed announces the instance', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    await notificationsOf(() => claim(a, ['hal5']));
    await eventually(async () => expect(await admin.exists(`${h.keyPrefix}lease:${a}`)).toBe(0));
    let swept: string[] = [];
    const got = await notificationsOf(async () => void (swept = await h.service.registry.sweep()));
    // earlier tests' instances lapsed too: each swept one with claims is announced, once
    expect(swept).toContain(a);
    expect(got).toContainEqual({ kind: 'instance', instanceId: a });
    expect(got.every((c) => c?.kind === 'instance' && swept.includes(c.instanceId))).toBe(true);
    expect(new Set(got.map((c) => c?.kind === 'instance' && c.instanceId)).size).toBe(got.length);
  });

  it('a lease that comes back announces the users the instance claims; a renewal announces nothing', async () => {
    const a = nextInstance('ws-a');
    await notificationsOf(() => claim(a, ['ida6', 'jon6'])); // claims without a lease: not returned by lookups yet
    expect(await notificationsOf(() => heartbeat(a))).toEqual([{ kind: 'users', users: expect.arrayContaining(['ida6', 'jon6']) }]);
    expect(await notificationsOf(() => heartbeat(a))).toEqual([]);
  });

  it('a heartbeat with a new URL announces the instance', async () => {
    const a = nextInstance('ws-a');
    await heartbeat(a);
    expect(await notificationsOf(() => heartbeat(a, `${urlOf(a)}/moved`))).toEqual([{ kind: 'instance', instanceId: a }]);
  });

  it('every heartbeat is echoed on the instance\'s beat channel, and only there', async () => {
    const a = nextInstance('ws-a');
    const from = beats.length;
    await heartbeat(a);
    await heartbeat(a);
    await eventually(() => expect(beats.slice(from).filter((c) => c === discoveryBeatChannel(h.keyPrefix, a))).toHaveLength(2));
    expect(beats.slice(from).every((c) => c === discoveryBeatChannel(h.keyPrefix, a))).toBe(true);
  });
});
