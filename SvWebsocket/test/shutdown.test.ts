/**
 * Graceful shutdown of a real SvWebsocket process (node SvWebsocket/dist/main.js)
 * against an in-process SvDiscover and SvPersist: SIGTERM in the middle of a
 * burst of sends.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { ProtocolSocket, type AnyServerFrame } from '@simplechat/shared';
import { startCluster, uid, wsProcessEnv, type TestCluster } from '../../test/cluster';
import { eventually, INTERNAL_TOKEN } from '../../test/helpers';

const ROOT = resolve(__dirname, '..', '..');
const SHUTDOWN_TIMEOUT_MS = 10_000;
const SENDERS = 10;
const SENDS_EACH = 50;

let c: TestCluster;
let child: ChildProcess | undefined;
const lines: Record<string, unknown>[] = [];

function startProcess(): Promise<number> {
  child = spawn(process.execPath, [resolve(ROOT, 'SvWebsocket/dist/main.js')], {
    cwd: ROOT,
    env: wsProcessEnv(c, {
      WS_PORT: '0',
      INSTANCE_ID: 'ws-proc',
      HEARTBEAT_MS: '500',
      RATE_LIMIT_PER_SEC: '1000',
      RATE_LIMIT_BURST: '1000',
      SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS),
      STATS_LOG_INTERVAL_MS: '300',
    }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = child;
  return new Promise((resolvePort, reject) => {
    proc.once('exit', (code) => reject(new Error(`SvWebsocket exited with ${code} before listening: ${JSON.stringify(lines)}`)));
    createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on('line', (line) => lines.push({ stderr: line }));
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line) as Record<string, unknown>;
      } catch {
        rec = { raw: line };
      }
      lines.push(rec);
      if (rec.msg === 'SvWebsocket listening') resolvePort(rec.port as number);
    });
  });
}

async function instancesOf(user: string): Promise<unknown[]> {
  const res = await fetch(`${c.discoverUrl}/internal/users/${user}`, { headers: { authorization: `Bearer ${INTERNAL_TOKEN}` } });
  return ((await res.json()) as { instances: unknown[] }).instances;
}

beforeAll(async () => {
  // A long lease: claims can only vanish at once through the instance's goodbye.
  c = await startCluster({ wsCount: 0, leaseMs: 30_000 });
});
afterAll(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  await c?.close();
});

describe('SIGTERM on a real SvWebsocket process', () => {
  it('drains within SHUTDOWN_TIMEOUT_MS: every send is answered, acked ones are stored, clients get 1001, claims are gone at once, exit 0', async () => {
    const port = await startProcess();
    const url = `ws://127.0.0.1:${port}/ws`;
    const users = Array.from({ length: SENDERS }, () => ({ sender: uid('s'), receiver: uid('r') }));
    const sockets: { sender: ProtocolSocket; receiver: ProtocolSocket }[] = [];
    for (const u of users) {
      const sender = await ProtocolSocket.open(url);
      const receiver = await ProtocolSocket.open(url);
      expect(await sender.register(await c.token(u.sender))).toMatchObject({ type: 'registered' });
      expect(await receiver.register(await c.token(u.receiver))).toMatchObject({ type: 'registered' });
      sockets.push({ sender, receiver });
    }
    // One more client that has stopped reading: it never completes the close handshake, so its
    // socket is only dropped at the end of the shutdown, after the goodbye to SvDiscover.
    const silentUser = uid('silent');
    const silent = await ProtocolSocket.open(url);
    expect(await silent.register(await c.token(silentUser))).toMatchObject({ type: 'registered' });
    await eventually(async () => expect(await instancesOf(users[0]?.receiver as string)).toHaveLength(1));
    // Connections are summed up in one periodic line, not logged one by one.
    await eventually(() => {
      const summaries = lines.filter((l) => l.msg === 'connections summary');
      expect(summaries.reduce((n, l) => n + (l.opened as number), 0)).toBe(2 * SENDERS + 1);
      expect(summaries.at(-1)).toMatchObject({ level: 'info', connections: 2 * SENDERS + 1, closed: 0 });
    });

    // A burst from every sender; SIGTERM as soon as the first acks come back, with most sends still in flight.
    const answers: Promise<AnyServerFrame | Error>[] = [];
    sockets.forEach((s, i) => {
      for (let k = 0; k < SENDS_EACH; k++) {
        answers.push(s.sender.request({ type: 'send', id: `b${k}`, to: users[i]?.receiver as string, body: `burst ${k}` }).catch((err: Error) => err));
      }
    });
    await sockets[0]?.sender.waitFor((f) => f.type === 'ack', 'first ack');
    const exited = new Promise<{ code: number | null; at: number }>((r) => child?.once('exit', (code) => r({ code, at: performance.now() })));
    const sigtermAt = performance.now();
    (silent.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    child?.kill('SIGTERM');

    const closeCodes = await Promise.all(sockets.flatMap((s) => [s.sender.waitForClose(SHUTDOWN_TIMEOUT_MS), s.receiver.waitForClose(SHUTDOWN_TIMEOUT_MS)]));
    const { code, at } = await exited;
    const drainMs = Math.round(at - sigtermAt);
    // Claims are dropped by the goodbye, not by the 30 s lease.
    for (const u of [...users.flatMap((u) => [u.sender, u.receiver]), silentUser]) expect(await instancesOf(u)).toEqual([]);

    expect(code).toBe(0);
    expect(drainMs).toBeLessThan(SHUTDOWN_TIMEOUT_MS);
    expect(closeCodes.every((cc) => cc === 1001)).toBe(true);

    const settled = await Promise.all(answers);
    const acked = settled.filter((f): f is AnyServerFrame => !(f instanceof Error) && f.type === 'ack');
    const refused = settled.filter((f) => !(f instanceof Error) && f.type === 'error');
    const unanswered = settled.filter((f) => f instanceof Error);
    // Every send was answered before the close: an ack (stored) or unavailable (retry elsewhere with the same id).
    expect(unanswered).toEqual([]);
    expect(refused.every((f) => (f as AnyServerFrame).code === 'unavailable')).toBe(true);
    expect(acked.length).toBeGreaterThan(0);
    expect(acked.length + refused.length).toBe(SENDERS * SENDS_EACH);

    const ids = acked.map((f) => f.msgId as string);
    await eventually(async () => {
      const rows = (await c.db.query('SELECT id FROM messages WHERE id = ANY($1)', [ids])).rows;
      expect(rows).toHaveLength(ids.length);
    });

    // the periodic summary lines depend on time, not on load: counted apart
    const info = lines.filter((l) => (l.level === 'info' || l.level === 'warn' || l.level === 'error') && l.msg !== 'connections summary');
    const drained = lines.find((l) => l.msg === 'drained');
    console.log(
      `[shutdown] SIGTERM -> exit 0 in ${drainMs} ms (service's own drain: ${String(drained?.drainMs)} ms); ${acked.length} sends acked, ${refused.length} answered unavailable, ${sockets.length * 2} clients closed with 1001; ${info.length} log lines at info or above`,
    );
    // One line per event that matters, not per message or connection: 20 connections and 500 sends stay a handful of lines.
    expect(info.length).toBeLessThan(14);
    expect(info.map((l) => l.msg)).toEqual(expect.arrayContaining(['SvWebsocket listening', 'shutting down', 'drained', 'stopped']));
    // in the order they happened: the last line is written before the process exits
    expect(info.map((l) => l.msg).slice(-2)).toEqual(['drained', 'stopped']);
    // A planned shutdown is not an incident: no warning (say, of SvDiscover "unreachable" for the
    // claims of closing connections, which the goodbye drops anyway) that would page someone.
    expect(lines.filter((l) => l.level === 'warn' || l.level === 'error' || l.stderr !== undefined)).toEqual([]);
  });
});
