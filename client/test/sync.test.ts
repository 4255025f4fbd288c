/**
 * Catch-up against a scripted server: after every register the client syncs
 * from its saved cursor (not the one in `registered`), follows `more` while the
 * cursor moves, syncs on `sync.hint`, shows each msgId once whether it came
 * live or by sync, and drops a connection whose `sync` goes unanswered.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import type { WireMessage } from '@simplechat/client';
import { eventually } from '../../test/helpers';
import { scriptedServerPerTest, testClient, type Frame, type ScriptedServer } from './scripted-server';

const servers = scriptedServerPerTest();
let server: ScriptedServer;
beforeEach(() => {
  server = servers.get();
});

const message = (n: number): WireMessage => ({ msgId: `01JD${String(n).padStart(22, '0')}`, from: 'bob', to: 'alice', body: `m${n}`, ts: n, seq: n });
const syncs = (frames: Frame[]) => frames.filter((f) => f.type === 'sync');

describe('sync', () => {
  it('takes the first registered cursor, then syncs from the saved one after a reconnect, following more', async () => {
    server.registeredCursor = '100';
    // page 1: 101-102, more; page 2: 103; then nothing new
    server.script = (conn, f) => {
      if (f.type !== 'sync') return;
      const after = Number(f.after);
      const page = after === 100 ? [101, 102] : after === 102 ? [103] : [];
      conn.send({ type: 'sync', id: f.id, messages: page.map(message), cursor: String(page.at(-1) ?? after), more: after === 100 });
      return true;
    };
    const client = testClient(server.url);
    const seen: [string, string][] = [];
    const synced: string[] = [];
    client.on('message', (m, source) => seen.push([m.body, source]));
    client.on('synced', (c) => synced.push(c));
    await eventually(() => expect(synced).toEqual(['103']));
    expect(seen).toEqual([['m101', 'sync'], ['m102', 'sync'], ['m103', 'sync']]);
    expect(syncs((await server.conn(0)).frames).map((f) => [f.after, f.limit])).toEqual([['100', 500], ['102', 500]]);
    // a new registered cursor does not replace the saved one
    server.registeredCursor = '999';
    (await server.conn(0)).close(1001);
    await eventually(() => expect(synced).toEqual(['103', '103']));
    expect(syncs((await server.conn(1)).frames).map((f) => f.after)).toEqual(['103']);
    expect(client.cursor).toBe('103');
  });

  it('syncs on sync.hint and shows a message once, live or by sync', async () => {
    server.script = (conn, f) => {
      if (f.type !== 'sync' || f.after !== '100') return;
      conn.send({ type: 'sync', id: f.id, messages: conn.frames.length > 2 ? [message(1), message(2)] : [], cursor: conn.frames.length > 2 ? '102' : '100', more: false });
      return true;
    };
    const client = testClient(server.url);
    const seen: string[] = [];
    client.on('message', (m, source) => seen.push(`${m.body}/${source}`));
    const conn = await server.conn(0);
    await eventually(() => expect(client.state).toBe('ready'));
    conn.send({ type: 'message', ...message(1) });
    await eventually(() => expect(seen).toEqual(['m1/live']));
    conn.send({ type: 'message', ...message(1) }); // again: not shown twice
    conn.send({ type: 'sync.hint' });
    await eventually(() => expect(seen).toEqual(['m1/live', 'm2/sync']));
    expect(client.hasSeen(message(2).msgId)).toBe(true);
  });

  it('does not loop on more with a cursor that does not move, and reports a sync error', async () => {
    let errors = 0;
    server.script = (conn, f) => {
      if (f.type !== 'sync') return;
      if (errors++ === 0) conn.send({ type: 'error', id: f.id, code: 'unavailable', message: 'storage unavailable' });
      else conn.send({ type: 'sync', id: f.id, messages: [], cursor: f.after, more: true });
      return true;
    };
    const client = testClient(server.url);
    const failures: string[] = [];
    client.on('syncFailed', (e) => failures.push(e.code));
    const synced: string[] = [];
    client.on('synced', (cursor) => synced.push(cursor));
    await eventually(() => expect(failures).toEqual(['unavailable']));
    client.sync();
    await eventually(async () => expect(syncs((await server.conn(0)).frames)).toHaveLength(2));
    // 'synced' is said instead of asking again: the answer did not start another sync
    await eventually(() => expect(synced).toHaveLength(1));
    expect(syncs((await server.conn(0)).frames)).toHaveLength(2);
  });

  it('drops a connection whose sync goes unanswered and syncs on the next one', async () => {
    server.script = (_conn, f) => f.type === 'sync' && server.conns.length === 1; // the first connection never answers a sync
    const client = testClient(server.url, { requestTimeoutMs: 200 });
    const closes: number[] = [];
    client.on('disconnected', (d) => closes.push(d.code));
    const synced: string[] = [];
    client.on('synced', (c) => synced.push(c));
    await eventually(() => expect(synced).toEqual(['100']));
    expect(closes).toEqual([1006]);
    expect(server.conns).toHaveLength(2);
  });
});
