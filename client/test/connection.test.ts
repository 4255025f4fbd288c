/**
 * The connection against scripted servers: moving on to the next URL, the
 * token cache (reused while fresh, dropped on 4401), the refresh before exp,
 * the ping that catches a silent peer (ws), the upgrade headers and onSocket
 * (ws), reconnectNow, and the persistence of the cursor and the outbox.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { PersistedState } from '@simplechat/client';
import { eventually } from '../../test/helpers';
import { closeClients, fakeToken, startScriptedServer, testClient, type ScriptedServer } from './scripted-server';

let a: ScriptedServer;
let b: ScriptedServer;
beforeEach(async () => {
  a = await startScriptedServer('ws-a');
  b = await startScriptedServer('ws-b');
});
afterEach(async () => {
  await closeClients();
  await Promise.all([a.close(), b.close()]);
});

describe('the connection', () => {
  it('moves on to the next URL when one cannot be reached or closes with 1001, and stays on a good one', async () => {
    const client = testClient(['ws://127.0.0.1:1/ws', a.url, b.url]);
    const registered: string[] = [];
    client.on('registered', (r) => registered.push(r.instanceId));
    await eventually(() => expect(registered).toEqual(['ws-a']));
    expect(client.url).toBe(a.url);
    (await a.conn(0)).close(1001, 'shutting down');
    await eventually(() => expect(registered).toEqual(['ws-a', 'ws-b']));
    expect(client.instanceId).toBe('ws-b');
  });

  it('reuses a fresh token on reconnect, takes a new one after 4401, and refreshes it before exp', async () => {
    let n = 0;
    const now = () => Math.floor(Date.now() / 1000);
    // The first token lives 2 s: a short-lived token is refreshed halfway (after at least 1 s).
    const tokens = [fakeToken('alice', now() + 2), fakeToken('alice', now() + 3600), fakeToken('alice', now() + 7200)];
    a.script = (conn, f) => {
      if (f.type === 'refresh') {
        conn.send({ type: 'refreshed', id: f.id, exp: now() + 3600 });
        return true;
      }
    };
    const client = testClient(a.url, { getToken: () => tokens[n++] as string });
    const refresh = await (await a.conn(0)).waitFor((f) => f.type === 'refresh', 4000);
    expect(refresh.token).toBe(tokens[1]);
    await eventually(() => expect(client.tokenExp).toBeGreaterThan(now() + 3000));
    // a drop: the refreshed token is fresh, no new one is asked for
    (await a.conn(0)).close(1001);
    await eventually(async () => expect((await a.conn(1)).frames[0]).toMatchObject({ type: 'register', token: tokens[1] }));
    expect(n).toBe(2);
    // 4401: a new token for the next connection
    (await a.conn(1)).close(4401, 'token expired');
    await eventually(async () => expect((await a.conn(2)).frames[0]).toMatchObject({ type: 'register', token: tokens[2] }));
    expect(n).toBe(3);
  });

  it('a failed getToken is said and tried again; the listener may close the client', async () => {
    let calls = 0;
    const client = testClient(a.url, {
      getToken: () => {
        calls++;
        throw new Error('no token service');
      },
    });
    const failures: string[] = [];
    client.on('tokenFailed', (err, during) => {
      failures.push(`${during}: ${(err as Error).message}`);
      if (failures.length === 2) void client.close();
    });
    await eventually(() => expect(client.state).toBe('closed'));
    expect(failures).toEqual(['connect: no token service', 'connect: no token service']);
    expect(calls).toBe(2);
    expect(a.conns).toHaveLength(0);
  });

  it('drops a peer that stops answering pings (ws) and registers elsewhere', async () => {
    const client = testClient([a.url, b.url], { pingIntervalMs: 50 });
    await eventually(() => expect(client.instanceId).toBe('ws-a'));
    // ws answers pings by itself: pausing the socket stops the pongs (and everything else)
    (await a.conn(0)).ws.pause();
    await eventually(() => expect(client.instanceId).toBe('ws-b'));
  });

  it('passes headers to ws, hands each socket to onSocket, and reconnectNow skips a backoff wait', async () => {
    // the first connection is closed before it registers: the next attempt waits its (long) backoff
    a.script = (conn, f) => f.type === 'register' && a.conns.length === 1 && (conn.close(1013), true);
    const sockets: WebSocket[] = [];
    const client = testClient(a.url, { headers: { origin: 'https://chat.example.com' }, onSocket: (s) => sockets.push(s), minBackoffMs: 60_000, maxBackoffMs: 60_000 });
    await eventually(() => expect(client.state).toBe('waiting'));
    expect(client.reconnectAt).toBeGreaterThan(Date.now());
    client.reconnectNow();
    await eventually(() => expect(client.state).toBe('ready'), { timeoutMs: 2000 });
    expect(a.conns.map((c) => c.headers.origin)).toEqual(['https://chat.example.com', 'https://chat.example.com']);
    expect(sockets).toHaveLength(2);
    expect(sockets[1]).toBeInstanceOf(WebSocket);
  });

  it('loads the cursor and outbox from its persistence, saves every change, and close() leaves the outbox saved', async () => {
    a.script = (conn, f) => {
      if (f.type === 'send' && f.id === 'old') conn.send({ type: 'ack', id: f.id, msgId: '01JD0000000000000000000001', ts: 1, seq: 1 });
      if (f.type === 'sync') {
        conn.send({ type: 'sync', id: f.id, messages: [], cursor: '77', more: false });
        return true;
      }
    };
    const saves: PersistedState[] = [];
    const client = testClient(a.url, {
      persistence: {
        load: () => ({ cursor: '50', outbox: [{ id: 'old', to: 'bob', body: 'from before the reload', createdAt: 1 }] }),
        save: (s) => saves.push({ ...s, outbox: [...s.outbox] }),
      },
    });
    expect(client.outbox().map((e) => e.id)).toEqual(['old']);
    await eventually(() => expect(client.cursor).toBe('77'));
    const conn = await a.conn(0);
    expect(conn.frames.find((f) => f.type === 'sync')).toMatchObject({ after: '50' });
    expect(conn.frames.find((f) => f.type === 'send')).toEqual({ type: 'send', id: 'old', to: 'bob', body: 'from before the reload' });
    await eventually(() => expect(saves.at(-1)).toEqual({ cursor: '77', outbox: [] }));
    void client.send('bob', 'unanswered', { id: 'new' });
    expect(saves.at(-1)).toEqual({ cursor: '77', outbox: [expect.objectContaining({ id: 'new' })] });
    const count = saves.length;
    await client.close();
    expect(saves).toHaveLength(count);
  });
});
