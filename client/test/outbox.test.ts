/**
 * The outbox against a scripted server: a send keeps its id until acked
 * (resent after a reconnect, after unavailable / internal / rate_limited, and
 * after the ack timeout), is refused for good only by answers resending
 * cannot change, and a frame larger than the server takes is refused here.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { ChatClientClosedError, SendRejectedError, type Ack } from '@simplechat/client';
import { eventually } from '../../test/helpers';
import { scriptedServerPerTest, testClient, type Frame, type ScriptedServer } from './scripted-server';

const servers = scriptedServerPerTest();
let server: ScriptedServer;
beforeEach(() => {
  server = servers.get();
});

const sends = (frames: Frame[]) => frames.filter((f) => f.type === 'send');
const ack = (id: unknown, n = 1) => ({ type: 'ack', id, msgId: `01JD${String(n).padStart(22, '0')}`, ts: 1000 + n, seq: n });

describe('the outbox', () => {
  it('sends once registered, resolves with the ack, and emits it with the attempts it took', async () => {
    server.script = (conn, f) => {
      if (f.type === 'send') conn.send(ack(f.id));
    };
    const client = testClient(server.url);
    const acks: unknown[] = [];
    client.on('ack', (a) => acks.push(a));
    const result = await client.send('bob', 'hello', { id: 'm1' });
    expect(result).toEqual({ id: 'm1', msgId: '01JD0000000000000000000001', ts: 1001, seq: 1 } satisfies Ack);
    expect(acks).toEqual([{ ...result, to: 'bob', attempts: 1 }]);
    expect(sends((await server.conn(0)).frames)).toEqual([{ type: 'send', id: 'm1', to: 'bob', body: 'hello' }]);
    expect(client.pending()).toBe(0);
    expect(client.hasSeen(result.msgId)).toBe(true);
  });

  it('sends to a room with `room`, and the same id twice is one message with one ack', async () => {
    server.script = (conn, f) => {
      if (f.type === 'send') setTimeout(() => conn.send(ack(f.id)), 20);
    };
    const client = testClient(server.url);
    const [a, b] = await Promise.all([client.send({ room: 'r_1' }, 'hi all', { id: 'same' }), client.send({ room: 'r_1' }, 'hi all', { id: 'same' })]);
    expect(a).toEqual(b);
    expect(sends((await server.conn(0)).frames)).toEqual([{ type: 'send', id: 'same', room: 'r_1', body: 'hi all' }]);
  });

  it('resends an unacked send with the same id on the next connection', async () => {
    let dropped = false;
    server.script = (conn, f) => {
      if (f.type !== 'send') return;
      if (!dropped) {
        dropped = true;
        conn.close(1001, 'going away'); // the ack is lost with the connection
      } else conn.send(ack(f.id));
    };
    const client = testClient(server.url);
    const acks: { attempts: number }[] = [];
    client.on('ack', (a) => acks.push(a));
    const result = await client.send('bob', 'hello', { id: 'm1' });
    expect(result.id).toBe('m1');
    expect(server.conns).toHaveLength(2);
    for (const c of server.conns) expect(sends(c.frames).map((f) => f.id)).toEqual(['m1']);
    expect(acks[0]?.attempts).toBe(2);
  });

  it('resends after unavailable, internal and rate_limited, and after no answer within ackTimeoutMs', async () => {
    const answers = ['unavailable', 'internal', 'rate_limited', 'none'];
    server.script = (conn, f) => {
      if (f.type !== 'send') return;
      const next = answers.shift();
      if (next === undefined) conn.send(ack(f.id));
      else if (next !== 'none') conn.send({ type: 'error', id: f.id, code: next, message: next, ...(next === 'rate_limited' ? { retryAfterMs: 10 } : {}) });
    };
    const client = testClient(server.url, { ackTimeoutMs: 200 });
    const result = await client.send('bob', 'hello', { id: 'm1' });
    expect(result.id).toBe('m1');
    expect(sends((await server.conn(0)).frames).map((f) => f.id)).toEqual(['m1', 'm1', 'm1', 'm1', 'm1']);
  });

  it('refuses for good what resending cannot change, and refuses a frame too large before sending it', async () => {
    server.script = (conn, f) => {
      if (f.type === 'send') conn.send({ type: 'error', id: f.id, code: 'forbidden', message: 'not a member of that room' });
    };
    const client = testClient(server.url, { maxFrameBytes: 200 });
    const rejected: unknown[] = [];
    client.on('rejected', (r) => rejected.push(r));
    await expect(client.send({ room: 'r_1' }, 'hi', { id: 'm1' })).rejects.toMatchObject({ name: 'SendRejectedError', code: 'forbidden', message: 'not a member of that room' });
    const big = client.send('bob', 'x'.repeat(300), { id: 'm2' });
    await expect(big).rejects.toBeInstanceOf(SendRejectedError);
    await expect(big).rejects.toMatchObject({ code: 'too_large' });
    expect(rejected).toEqual([
      { id: 'm1', to: 'r_1', code: 'forbidden', message: 'not a member of that room' },
      expect.objectContaining({ id: 'm2', to: 'bob', code: 'too_large' }),
    ]);
    expect(sends((await server.conn(0)).frames).map((f) => f.id)).toEqual(['m1']);
    expect(client.pending()).toBe(0);
  });

  it('keeps sends while it cannot connect; idle() is bounded; close() rejects what is pending', async () => {
    const client = testClient('ws://127.0.0.1:1/ws');
    const pending = client.send('bob', 'never', { id: 'm1' });
    expect(client.outbox()).toEqual([expect.objectContaining({ id: 'm1', to: 'bob', body: 'never' })]);
    await expect(client.idle(50)).rejects.toThrow(/unacked/);
    await client.close();
    await expect(pending).rejects.toBeInstanceOf(ChatClientClosedError);
    await expect(client.send('bob', 'after')).rejects.toBeInstanceOf(ChatClientClosedError);
    expect(client.state).toBe('closed');
  });

  it('goes on resending after unauthorized once registered again', async () => {
    let first = true;
    server.script = (conn, f) => {
      if (f.type !== 'send') return;
      if (first) {
        first = false;
        conn.send({ type: 'error', id: f.id, code: 'unauthorized', message: 'token expired' });
        conn.close(4401, 'token expired');
      } else conn.send(ack(f.id));
    };
    const client = testClient(server.url);
    await expect(client.send('bob', 'hello', { id: 'm1' })).resolves.toMatchObject({ id: 'm1' });
    await eventually(() => expect(server.conns).toHaveLength(2));
  });
});
