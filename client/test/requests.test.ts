/**
 * Requests answered by id against a scripted server: the typed helpers
 * (history, rooms) and the generic request(), which resolves with the frame
 * carrying its id and rejects on an error with it, on timeout, or when the
 * connection goes away. Frames the client does not handle go to `frame`.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { RequestError, type InboundFrame } from '@simplechat/client';
import { eventually } from '../../test/helpers';
import { scriptedServerPerTest, testClient, type ScriptedServer } from './scripted-server';

const servers = scriptedServerPerTest();
let server: ScriptedServer;
beforeEach(() => {
  server = servers.get();
});

const info = { room: 'r_1', name: 'Team', owner: 'alice', members: ['alice', 'bob'] };

async function ready() {
  const client = testClient(server.url);
  await eventually(() => expect(client.state).toBe('ready'));
  return client;
}

describe('requests', () => {
  it('history and room requests send their frames with a fresh id and resolve with the typed answer', async () => {
    const m = { msgId: '01JD0000000000000000000001', from: 'bob', room: 'r_1', body: 'hi', ts: 1, seq: 1 };
    server.script = (conn, f) => {
      const id = f.id;
      switch (f.type) {
        case 'history':
          return conn.send({ type: 'history', id, room: f.room, messages: [m, { junk: true }], more: true, empty: [] });
        case 'room.create':
        case 'room.add':
        case 'room.remove':
        case 'room.get':
          return conn.send({ type: 'room.info', id, ...info });
        case 'room.leave':
          return conn.send({ type: 'room.left', id, room: f.room });
        case 'room.list':
          return conn.send({ type: 'rooms', id, rooms: f.after === undefined ? [{ room: 'r_1', name: 'Team', owner: 'alice', memberCount: 2 }] : [{ room: 'r_2', name: 'B', owner: 'bob', memberCount: 3 }], more: f.after === undefined });
      }
    };
    const client = await ready();
    expect(await client.history({ room: 'r_1' }, { before: m.msgId, limit: 10 })).toEqual({ messages: [m], more: true, empty: [] });
    expect(await client.createRoom('Team', ['bob'])).toEqual(info);
    expect(await client.addMember('r_1', 'carol')).toEqual(info);
    expect(await client.removeMember('r_1', 'carol')).toEqual(info);
    expect(await client.getRoom('r_1')).toEqual(info);
    await client.leaveRoom('r_1');
    expect((await client.listAllRooms()).map((r) => r.room)).toEqual(['r_1', 'r_2']);
    // besides register and sync, the client asks for the conversation list to learn its marks (marks.ts)
    const sent = (await server.conn(0)).frames.filter((f) => f.type !== 'register' && f.type !== 'sync' && f.type !== 'conversations' && f.type !== 'receipt');
    expect(sent.map(({ id: _id, ...f }) => f)).toEqual([
      { type: 'history', room: 'r_1', before: m.msgId, limit: 10 },
      { type: 'room.create', name: 'Team', members: ['bob'] },
      { type: 'room.add', room: 'r_1', userId: 'carol' },
      { type: 'room.remove', room: 'r_1', userId: 'carol' },
      { type: 'room.get', room: 'r_1' },
      { type: 'room.leave', room: 'r_1' },
      { type: 'room.list' },
      { type: 'room.list', after: 'r_1' },
    ]);
    expect(new Set(sent.map((f) => f.id)).size).toBe(sent.length);
  });

  it('rejects on an error with its id, on timeout, when not connected, and when the connection drops', async () => {
    server.script = (conn, f) => {
      if (f.type === 'room.get') conn.send({ type: 'error', id: f.id, code: 'not_found', message: 'no such room' });
      if (f.type === 'room.leave') conn.close(1001);
      return f.type === 'presence.get'; // never answered
    };
    const client = await ready();
    await expect(client.getRoom('r_9')).rejects.toMatchObject({ name: 'RequestError', code: 'not_found', message: 'no such room' });
    await expect(client.request({ type: 'presence.get', users: ['bob'] }, { timeoutMs: 50 })).rejects.toMatchObject({ code: 'timeout' });
    await expect(client.leaveRoom('r_1')).rejects.toMatchObject({ code: 'disconnected' });
    const offline = testClient('ws://127.0.0.1:1/ws');
    await expect(offline.getRoom('r_1')).rejects.toBeInstanceOf(RequestError);
    await expect(offline.getRoom('r_1')).rejects.toMatchObject({ code: 'disconnected' });
    await client.close();
    await expect(client.request({ type: 'room.list' })).rejects.toMatchObject({ code: 'closed' });
  });

  it('a frame type the client does not know is a request like any other, and unhandled frames go to `frame`', async () => {
    server.script = (conn, f) => {
      if (f.type === 'weather.get') conn.send({ type: 'weather', id: f.id, places: { oslo: 'rain' } });
    };
    const client = await ready();
    const unhandled: InboundFrame[] = [];
    const inbound: string[] = [];
    client.on('frame', (f) => unhandled.push(f));
    client.on('inbound', (f) => inbound.push(f.type));
    expect(await client.request({ type: 'weather.get', places: ['oslo'] })).toMatchObject({ type: 'weather', places: { oslo: 'rain' } });
    const conn = await server.conn(0);
    const event = { type: 'room.event', room: 'r_1', event: 'added', userId: 'bob', by: 'alice', ts: 5 };
    conn.send(event);
    conn.send({ type: 'weather.alert', place: 'oslo' });
    conn.send({ type: 'error', code: 'rate_limited', message: 'slow down', retryAfterMs: 10 });
    conn.send({ type: 'room.event', room: 'r_1' }); // malformed: dropped
    await eventually(() => expect(unhandled.map((f) => f.type)).toEqual(['room.event', 'weather.alert', 'error']));
    expect(unhandled[0]).toEqual(event);
    expect(inbound).toEqual(['weather', 'room.event', 'weather.alert', 'error']);
  });
});
