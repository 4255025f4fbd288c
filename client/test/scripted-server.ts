/**
 * A scripted SimpleChat peer for the client's unit tests: a real `ws` server
 * on 127.0.0.1 that records every frame of every connection and answers as
 * each test says (by default: `register` with `registered`, `sync` with an
 * empty page at the same cursor). It plays the protocol, not the cluster: the
 * integration tests run the client against the real services.
 */
import { afterEach, beforeEach } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import type { IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createChatClient, type ChatClient, type ChatClientOptions } from '@simplechat/client';

export type Frame = { type: string; [field: string]: unknown };

export interface Conn {
  readonly ws: WebSocket;
  /** of the upgrade request */
  readonly headers: IncomingHttpHeaders;
  readonly frames: Frame[];
  send(frame: Frame): void;
  /** resolves with the first frame (already received or future) matching */
  waitFor(match: (f: Frame) => boolean, timeoutMs?: number): Promise<Frame>;
  close(code?: number, reason?: string): void;
}

/** Answers a frame; return true when it answered (the default answers are skipped). */
export type Script = (conn: Conn, frame: Frame) => boolean | void;

export interface ScriptedServer {
  readonly url: string;
  readonly conns: Conn[];
  /** resolves with connection number `index` (0-based) once it is open */
  conn(index: number, timeoutMs?: number): Promise<Conn>;
  script: Script;
  /** the cursor the default `registered` carries */
  registeredCursor: string | undefined;
  close(): Promise<void>;
}

/** A JWT-shaped token (not signed: the scripted server does not check it) with this sub and exp. */
export function fakeToken(sub: string, exp = Math.floor(Date.now() / 1000) + 3600): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'none' })}.${part({ sub, exp })}.sig`;
}

function subOf(token: unknown): string {
  if (typeof token !== 'string') return '?';
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as { sub?: string };
    return payload.sub ?? '?';
  } catch {
    return '?';
  }
}

async function until<T>(get: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = get();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`no ${what} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export async function startScriptedServer(instanceId = 'ws-test'): Promise<ScriptedServer> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  const conns: Conn[] = [];
  const server: ScriptedServer = {
    url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/ws`,
    conns,
    conn: (index, timeoutMs = 3000) => until(() => conns[index], `connection #${index}`, timeoutMs),
    script: () => false,
    registeredCursor: '100',
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => resolve());
      }),
  };
  wss.on('connection', (ws, req) => {
    const frames: Frame[] = [];
    const conn: Conn = {
      ws,
      headers: req.headers,
      frames,
      send: (frame) => ws.send(JSON.stringify(frame)),
      waitFor: (match, timeoutMs = 3000) => until(() => frames.find(match), 'matching frame', timeoutMs),
      close: (code = 1000, reason = '') => ws.close(code, reason),
    };
    conns.push(conn);
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data)) as Frame;
      frames.push(frame);
      if (server.script(conn, frame) === true) return;
      if (frame.type === 'register') {
        conn.send({ type: 'registered', userId: subOf(frame.token), instanceId, syncIntervalMs: 60_000, ...(server.registeredCursor === undefined ? {} : { cursor: server.registeredCursor }) });
      } else if (frame.type === 'sync') {
        conn.send({ type: 'sync', id: frame.id, messages: [], cursor: frame.after ?? '0', more: false });
      }
    });
  });
  return server;
}

const opened: ChatClient[] = [];

/** A client on ws with short bounds, for `user` (default alice); closeClients() closes them all. */
export function testClient(urls: string | string[], extra: Partial<ChatClientOptions<typeof WebSocket>> = {}, user = 'alice'): ChatClient {
  const client = createChatClient({
    WebSocket,
    urls: typeof urls === 'string' ? [urls] : urls,
    getToken: () => fakeToken(user),
    minBackoffMs: 10,
    maxBackoffMs: 50,
    requestTimeoutMs: 1000,
    ackTimeoutMs: 1000,
    pingIntervalMs: 0,
    ...extra,
  });
  opened.push(client);
  return client;
}

export async function closeClients(): Promise<void> {
  await Promise.all(opened.splice(0).map((c) => c.close()));
}

/** A fresh scripted server for each test of the file (and its clients closed after it); `get()` is the current one. */
export function scriptedServerPerTest(instanceId?: string): { get(): ScriptedServer } {
  let server: ScriptedServer | undefined;
  beforeEach(async () => {
    server = await startScriptedServer(instanceId);
  });
  afterEach(async () => {
    await closeClients();
    await server?.close();
  });
  return {
    get() {
      if (!server) throw new Error('the scripted server starts in beforeEach');
      return server;
    },
  };
}
