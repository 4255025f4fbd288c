/**
 * A user's presence claim in SvDiscover comes before `registered`, for every
 * connection of the user: a connection answered earlier could miss messages
 * other instances route by SvDiscover's answer. And the storage cursor that
 * `registered` carries is read once for all the registrations that start
 * while a read is in flight. A real SvWebsocket process talks to the real
 * SvDiscover and SvPersist through HTTP gates that can hold calls.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CURSOR_RE, ProtocolSocket } from '@simplechat/shared';
import { startCluster, startGatewayProcess, uid, type TestCluster } from '../../test/cluster';
import { eventually } from '../../test/helpers';
import { startHttpGate } from '../../test/http-gate';
import { scrape, sample } from '../../test/metrics';

let c: TestCluster;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  c = await startCluster({ wsCount: 1 });
});
afterAll(async () => {
  for (const clean of cleanups.reverse()) await clean();
  await c?.close();
});

/** A pass-through to a service that can hold one kind of call (method and path) before it reaches the service. */
async function startGate(targetUrl: string, heldMethod: string, heldPath: string) {
  const gate = await startHttpGate(targetUrl, { at: 'request', holds: (method, path) => method === heldMethod && path === heldPath });
  cleanups.push(() => gate.close());
  return gate;
}

async function startGateway(env: Record<string, string>): Promise<number> {
  const gw = await startGatewayProcess(c, env);
  cleanups.push(() => gw.kill());
  return gw.port;
}

describe('claims before registered', () => {
  it("a user's second connection is answered registered only once the first connection's claim reached SvDiscover", async () => {
    const gate = await startGate(c.discoverUrl, 'POST', '/internal/claims');
    const port = await startGateway({ INSTANCE_ID: 'ws-claims', DISCOVER_URL: gate.url });
    const user = uid('cleo');
    gate.hold();
    const first = await ProtocolSocket.open(`ws://127.0.0.1:${port}/ws`);
    const second = await ProtocolSocket.open(`ws://127.0.0.1:${port}/ws`);
    cleanups.push(() => first.close(), () => second.close());
    const registeredAt: number[] = [];
    const registering = [first, second].map(async (s) => {
      const reg = await s.register(await c.token(user));
      registeredAt.push(Date.now());
      return reg;
    });
    await eventually(() => expect(gate.held()).toBe(1));
    // Both connections are in the instance's registry (counted as open): the second register has
    // been handled as far as it goes while the first one's claim is held.
    await eventually(async () => expect(sample(await scrape(`http://127.0.0.1:${port}`), 'simplechat_connections_open')).toBe(2));
    const releasedAt = Date.now();
    gate.release();
    for (const reg of await Promise.all(registering)) expect(reg).toMatchObject({ type: 'registered', userId: user });
    expect(registeredAt.every((t) => t >= releasedAt)).toBe(true);
  });
});

describe('the cursor of registered', () => {
  it('registrations that start while a cursor read is in flight share it: twenty registrations, one read, one cursor; a later one reads again', async () => {
    const gate = await startGate(c.persistUrl, 'GET', '/internal/cursor');
    const port = await startGateway({ INSTANCE_ID: 'ws-cursor', PERSIST_URL: gate.url });
    const sockets = await Promise.all(Array.from({ length: 20 }, () => ProtocolSocket.open(`ws://127.0.0.1:${port}/ws`)));
    cleanups.push(() => sockets.forEach((s) => s.close()));
    const readsBefore = gate.matched();
    gate.hold();
    const registering = sockets.map(async (s, i) => s.register(await c.token(uid(`cur${i}`))));
    // A registration asks for the cursor in the same step that counts its connection as open,
    // so once all twenty are counted every one of them has asked.
    await eventually(async () => expect(sample(await scrape(`http://127.0.0.1:${port}`), 'simplechat_connections_open')).toBe(20));
    await eventually(() => expect(gate.held()).toBe(1));
    gate.release();
    const regs = await Promise.all(registering);
    expect(gate.matched() - readsBefore).toBe(1);
    const cursors = new Set(regs.map((r) => r.cursor));
    expect(regs.every((r) => r.type === 'registered')).toBe(true);
    expect(cursors.size).toBe(1);
    expect([...cursors][0]).toMatch(CURSOR_RE);

    // once that read is answered, the next registration reads again
    const later = await ProtocolSocket.open(`ws://127.0.0.1:${port}/ws`);
    cleanups.push(() => later.close());
    expect(await later.register(await c.token(uid('curlater')))).toMatchObject({ type: 'registered', cursor: expect.stringMatching(CURSOR_RE) });
    expect(gate.matched() - readsBefore).toBe(2);
  });
});
