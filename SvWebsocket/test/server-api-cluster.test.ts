/**
 * The server API on a real two-instance cluster (PROTOCOL.md "Server API"):
 * room management and posting as any user reach clients on both instances,
 * with the idempotency, positions and storage of a client send.
 */
import { describe, it, expect } from 'vitest';
import { request } from 'undici';
import type { WireMessage } from '@simplechat/shared';
import { clusterPerFile, uid } from '../../test/cluster';
import { eventually } from '../../test/helpers';

const KEY = 'cluster-test-server-api-key-0123456789abcdef';
const cluster = clusterPerFile({ wsCount: 2, wsEnv: { SERVER_API_KEYS: KEY } });
const connect = (user: string, i = 0) => cluster.connect(user, i);

async function api(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, key: string | null = KEY, i = 0): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await request(`${cluster.c.httpUrl(i)}/api/v1${path}`, {
    method,
    headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

describe('server API on a cluster', () => {
  it('manages a room: created, read, members added and removed, listed, with events marked as from the API', async () => {
    const [alice, bob, dave] = [uid('alice'), uid('bob'), uid('dave')];
    const b = await connect(bob, 1);
    const created = await api('POST', '/rooms', { name: 'Ops', owner: alice, members: [bob] });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'Ops', owner: alice, members: [alice, bob] });
    const room = created.body.room as string;
    const event = await b.waitFor((f) => f.type === 'room.event' && f.room === room);
    expect(event).toMatchObject({ event: 'created', userId: alice, by: null, via: 'api' });
    expect((await api('GET', `/rooms/${room}`, undefined, KEY, 1)).body).toEqual({ room, name: 'Ops', owner: alice, members: [alice, bob] });
    expect((await api('POST', `/rooms/${room}/members`, { userId: dave })).body).toMatchObject({ members: [alice, bob, dave] });
    expect((await api('DELETE', `/rooms/${room}/members/${bob}`)).body).toMatchObject({ members: [alice, dave] });
    await b.waitFor((f) => f.type === 'room.event' && f.room === room && f.event === 'removed' && f.via === 'api');
    const list = await api('GET', `/users/${dave}/rooms`);
    expect(list).toEqual({ status: 200, body: { rooms: [{ room, name: 'Ops', owner: alice, memberCount: 2 }], more: false } });
    expect((await api('GET', '/rooms/r_01JD6Q5Z3W4X8Y9ZABCDEFGHJK')).status).toBe(404);
  });

  it('posts as a bot into a room it is not in and to a user: delivered on both instances, acked with a position, stored once; a repeat is the same message, other content a conflict', async () => {
    const [alice, bob, bot] = [uid('alice'), uid('bob'), uid('bot')];
    const a = await connect(alice, 0);
    const b = await connect(bob, 1);
    const room = (await api('POST', '/rooms', { name: 'Notices', owner: alice, members: [bob] })).body.room as string;
    const posted = await api('POST', '/messages', { id: 'notice-1', from: bot, room, body: 'maintenance at 6' });
    expect(posted.status).toBe(200);
    expect(posted.body).toEqual({ msgId: expect.any(String), ts: expect.any(Number), seq: 1 });
    for (const s of [a, b]) expect(await s.waitForMessage((m) => m.msgId === posted.body.msgId)).toMatchObject({ from: bot, room, body: 'maintenance at 6', seq: 1 });
    const again = await api('POST', '/messages', { id: 'notice-1', from: bot, room, body: 'maintenance at 6' }, KEY, 1);
    expect(again).toEqual(posted);
    expect((await api('POST', '/messages', { id: 'notice-1', from: bot, room, body: 'something else' })).status).toBe(409);
    const direct = await api('POST', '/messages', { id: 'dm-1', from: bot, to: bob, body: 'hello bob' });
    expect(direct.status).toBe(200);
    expect(await b.waitForMessage((m) => m.msgId === direct.body.msgId)).toMatchObject({ from: bot, to: bob, seq: 1 });
    await eventually(async () => {
      const rows = (await cluster.c.db.query('SELECT id FROM messages WHERE sender = $1', [bot])).rows;
      expect(rows.map((r) => r.id).sort()).toEqual([posted.body.msgId, direct.body.msgId].sort());
    });
    const synced = (await b.request({ type: 'sync' })).messages as WireMessage[];
    expect(synced.map((m) => m.msgId)).toEqual(expect.arrayContaining([posted.body.msgId, direct.body.msgId]));
  });

  it('refuses a request without a valid key before anything else, and names each invalid field', async () => {
    expect((await api('GET', '/no/such/route', undefined, null)).status).toBe(401);
    expect((await api('POST', '/rooms', { name: 'x', owner: 'a' }, 'wrong-key')).status).toBe(401);
    const bad = await api('POST', '/messages', { id: '', from: 'not a user!', body: '' });
    expect(bad.status).toBe(400);
    expect(String((bad.body.error as { message: string }).message)).toMatch(/id.*from|from.*id/s);
    const doc = await request(`${cluster.c.httpUrl(0)}/api/v1/openapi.json`);
    expect(doc.statusCode).toBe(200);
    expect(((await doc.body.json()) as { openapi: string }).openapi).toMatch(/^3\.1/);
  });
});
