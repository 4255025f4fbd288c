/**
 * The Server API over real HTTP, mounted the way the gateway's app mounts it (ahead of its 8 MB
 * body parser and internal auth), with an in-memory ServerApiDomain standing in for the room and
 * message domain.
 */
import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest';
import type { Server } from 'node:http';
import express from 'express';
import {
  createApp,
  createLogger,
  createMetrics,
  httpMetrics,
  internalAuth,
  errorHandler,
  listen,
  boundPort,
  closeServer,
  DomainError,
  UnavailableError,
  ConfigError,
  type ServerApiDomain,
  type RoomInfo,
  type PostMessageRequest,
} from '@simplechat/shared';
import { createServerApi, serverApiOpenApi, SERVER_API_BASE_PATH } from '../src/server-api';
import { loadWsConfig } from '../src/config';

const KEY = 'current-server-api-key-0123456789abcdef';
const PREVIOUS_KEY = 'previous-server-api-key-0123456789abcdef';
const INTERNAL_TOKEN = 'internal-token-0123456789abcdef0123456789';
const MAX_BODY_CHARS = 4000;

/** In-memory rooms and messages; `failWith` makes the next domain call throw. */
function createFakeDomain() {
  const rooms = new Map<string, RoomInfo>();
  const sent = new Map<string, { req: PostMessageRequest; result: { msgId: string; ts: number; seq: number } }>();
  const calls: { op: string; args: unknown[] }[] = [];
  let failure: unknown;
  let nextRoom = 1;
  const call = (op: string, ...args: unknown[]) => {
    calls.push({ op, args });
    if (failure !== undefined) {
      const err = failure;
      failure = undefined;
      throw err;
    }
  };
  const roomOf = (room: string) => {
    const r = rooms.get(room);
    if (!r) throw new DomainError('not_found', `no room ${room}`);
    return r;
  };
  const domain: ServerApiDomain = {
    async postMessage(req) {
      call('postMessage', req);
      const key = `${req.from}\n${req.id}`;
      const first = sent.get(key);
      if (first) {
        if (first.req.to !== req.to || first.req.room !== req.room || first.req.body !== req.body) throw new DomainError('conflict', `id ${req.id} was already used by ${req.from} for another message`);
        return first.result;
      }
      if (req.room !== undefined) roomOf(req.room);
      const result = { msgId: `01JD6Q5Z3W4X8Y9ZABCDEF${String(sent.size).padStart(4, '0')}`, ts: 1732345678901 + sent.size, seq: sent.size + 1 };
      sent.set(key, { req, result });
      return result;
    },
    async createRoom(req) {
      call('createRoom', req);
      const info = { room: `r_${nextRoom++}`, name: req.name, owner: req.owner, members: [req.owner, ...req.members.filter((m) => m !== req.owner)] };
      rooms.set(info.room, info);
      return info;
    },
    async getRoom(room) {
      call('getRoom', room);
      return roomOf(room);
    },
    async addMember(room, userId) {
      call('addMember', room, userId);
      const r = roomOf(room);
      if (!r.members.includes(userId)) r.members.push(userId);
      return r;
    },
    async removeMember(room, userId) {
      call('removeMember', room, userId);
      const r = roomOf(room);
      if (userId === r.owner) throw new DomainError('bad_request', 'the owner cannot be removed; it leaves instead');
      r.members = r.members.filter((m) => m !== userId);
      return r;
    },
    async listUserRooms(userId, after) {
      call('listUserRooms', userId, after);
      const mine = [...rooms.values()].filter((r) => r.members.includes(userId) && (after === undefined || r.room > after)).sort((a, b) => (a.room < b.room ? -1 : 1));
      return { rooms: mine.slice(0, 2).map((r) => ({ room: r.room, name: r.name, owner: r.owner, memberCount: r.members.length })), more: mine.length > 2 };
    },
  };
  return {
    domain,
    calls,
    failWith(err: unknown) {
      failure = err;
    },
    reset() {
      rooms.clear();
      sent.clear();
      calls.length = 0;
      failure = undefined;
      nextRoom = 1;
    },
  };
}

function createLogCapture() {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger('SvWebsocket/test', 'debug', { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

const fake = createFakeDomain();
const logs = createLogCapture();
let server: Server;
let base: string;

beforeAll(async () => {
  const metrics = createMetrics({ service: 'SvWebsocket', instanceId: 'test' });
  // As app.ts builds its app: the Server API goes in `before`, ahead of the 8 MB JSON parser.
  const serverApi = express.Router().use(SERVER_API_BASE_PATH, createServerApi({ keys: [KEY, PREVIOUS_KEY], domain: fake.domain, maxBodyChars: MAX_BODY_CHARS, log: logs.log, metrics }));
  const app = createApp({ bodyLimit: '8mb', before: [httpMetrics(metrics), internalAuth([INTERNAL_TOKEN], logs.log), serverApi] });
  app.post('/echo-size', (req, res) => void res.json({ keys: Object.keys(req.body as object).length }));
  app.use((_req, res) => void res.status(404).json({ error: 'not found' }));
  app.use(errorHandler(logs.log));
  server = await listen(app, 0, '127.0.0.1');
  base = `http://127.0.0.1:${boundPort(server)}${SERVER_API_BASE_PATH}`;
});

afterAll(async () => {
  await closeServer(server);
});

beforeEach(() => {
  fake.reset();
  logs.lines.length = 0;
});

interface Answer {
  status: number;
  headers: Headers;
  body: { error?: { code: string; message: string; retryAfterMs?: number } } & Record<string, unknown>;
  text: string;
}

async function api(method: string, path: string, options: { key?: string | null; json?: unknown; raw?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const key = options.key === undefined ? KEY : options.key;
  const headers: Record<string, string> = { ...(key === null ? {} : { authorization: `Bearer ${key}` }), ...options.headers };
  let body: string | undefined;
  if (options.json !== undefined || options.raw !== undefined) {
    headers['content-type'] ??= 'application/json';
    body = options.raw ?? JSON.stringify(options.json);
  }
  const res = await fetch(`${base}${path}`, { method, headers, body });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? (JSON.parse(text) as Answer['body']) : {}, text };
}

const message = (over: Record<string, unknown> = {}) => ({ id: 'key-1', from: 'bot-1', to: 'bob', body: 'hello', ...over });

describe('Server API: keys', () => {
  it('refuses a request without a key, with a wrong key or another scheme, with 401 and the JSON error, before the domain sees it', async () => {
    for (const key of [null, 'wrong-key', `${KEY}x`, '']) {
      const r = await api('POST', '/messages', { key, json: message() });
      expect(r.status).toBe(401);
      expect(r.body).toEqual({ error: { code: 'unauthorized', message: expect.stringContaining('SERVER_API_KEYS') } });
      expect(r.headers.get('www-authenticate')).toBe('Bearer');
    }
    const basic = await api('GET', '/rooms/r_1', { key: null, headers: { authorization: `Basic ${KEY}` } });
    expect(basic.status).toBe(401);
    expect(fake.calls).toEqual([]);
  });

  it('answers 401, not 404, to an unknown path without a key', async () => {
    const r = await api('GET', '/no/such/route', { key: null });
    expect(r.status).toBe(401);
    expect(r.body.error?.code).toBe('unauthorized');
  });

  it('does not take the internal token as a Server API key', async () => {
    const r = await api('GET', '/users/alice/rooms', { key: INTERNAL_TOKEN });
    expect(r.status).toBe(401);
  });

  it('accepts both the current and the previous key (rotation)', async () => {
    for (const key of [KEY, PREVIOUS_KEY]) {
      const r = await api('GET', '/users/alice/rooms', { key });
      expect(r.status).toBe(200);
    }
  });

  it('checks the key before the body: an outsider gets 401 for a malformed or oversized body, not 400 or 413', async () => {
    const malformed = await api('POST', '/messages', { key: null, raw: '{"id":' });
    expect(malformed.status).toBe(401);
    const big = await api('POST', '/messages', { key: null, raw: JSON.stringify(message({ body: 'x'.repeat(200_000) })) });
    expect(big.status).toBe(401);
  });

  it('with no key configured, refuses every request', async () => {
    const app = express().use(SERVER_API_BASE_PATH, createServerApi({ keys: [], domain: fake.domain, maxBodyChars: MAX_BODY_CHARS, log: logs.log }));
    const s = await listen(app, 0, '127.0.0.1');
    try {
      const res = await fetch(`http://127.0.0.1:${boundPort(s)}${SERVER_API_BASE_PATH}/users/alice/rooms`, { headers: { authorization: 'Bearer ' } });
      expect(res.status).toBe(401);
    } finally {
      await closeServer(s);
    }
  });
});

describe('Server API: validation', () => {
  it('names each invalid field of a message at once (400)', async () => {
    const r = await api('POST', '/messages', { json: { id: '', from: 'not a user!', body: '', extra: 1 } });
    expect(r.status).toBe(400);
    expect(r.body.error?.code).toBe('bad_request');
    const msg = r.body.error?.message ?? '';
    expect(msg).toMatch(/(^|; )id: must be 1-64 characters/);
    expect(msg).toMatch(/(^|; )from: must be a user id \(1-64 characters of A-Z a-z 0-9 _ \. -\)/);
    expect(msg).toMatch(/(^|; )body: must not be empty/);
    expect(msg).toMatch(/(^|; )to: one of to \(a user id\) or room \(a room id\) is required/);
    expect(fake.calls).toEqual([]);
  });

  it('says which fields are missing or of the wrong type', async () => {
    const r = await api('POST', '/messages', { json: { id: 7, to: 'bob', room: 'r_1' } });
    expect(r.status).toBe(400);
    expect(r.body.error?.message).toBe('id: must be a string; from: is required; body: is required; room: must not be given together with to');
  });

  it('refuses bodies with control characters or lone surrogates, as client sends', async () => {
    const ctl = await api('POST', '/messages', { json: message({ body: 'a\u0000b' }) });
    expect(ctl.status).toBe(400);
    expect(ctl.body.error?.message).toMatch(/^body: contains a control character/);
    const lone = await api('POST', '/messages', { raw: '{"id":"k","from":"bot-1","to":"bob","body":"\\ud800"}' });
    expect(lone.status).toBe(400);
    expect(lone.body.error?.message).toMatch(/^body: contains a lone surrogate/);
  });

  it('answers a body over MAX_BODY_CHARS code points with 413 too_large naming the field', async () => {
    const r = await api('POST', '/messages', { json: message({ body: 'x'.repeat(MAX_BODY_CHARS + 1) }) });
    expect(r.status).toBe(413);
    expect(r.body.error).toEqual({ code: 'too_large', message: `body: is longer than ${MAX_BODY_CHARS} characters; split it into several messages` });
    // counted in code points: MAX_BODY_CHARS emoji are twice as many UTF-16 units, and fit
    const emoji = await api('POST', '/messages', { json: message({ body: '😀'.repeat(MAX_BODY_CHARS) }) });
    expect(emoji.status).toBe(200);
  });

  it('a too_large field next to a malformed one answers 400 naming both', async () => {
    const r = await api('POST', '/messages', { json: message({ from: '', body: 'x'.repeat(MAX_BODY_CHARS + 1) }) });
    expect(r.status).toBe(400);
    expect(r.body.error?.message).toMatch(/from: .*; body: is longer than/);
  });

  it('answers malformed JSON with 400 and a body that is not an object with 400', async () => {
    const bad = await api('POST', '/messages', { raw: '{"id":' });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toEqual({ code: 'bad_request', message: 'request body is not valid JSON' });
    const arr = await api('POST', '/messages', { raw: '[1,2]' });
    expect(arr.status).toBe(400);
    expect(arr.body.error?.message).toBe('request body: must be a JSON object');
    const notJson = await api('POST', '/messages', { raw: 'id=1', headers: { 'content-type': 'text/plain' } });
    expect(notJson.status).toBe(400);
    expect(notJson.body.error?.message).toMatch(/Content-Type: application\/json/);
  });

  it('answers a body over 64 KiB with 413 too_large in the JSON error shape, though the app itself takes 8 MB', async () => {
    const big = JSON.stringify(message({ body: 'x'.repeat(64 * 1024) }));
    const r = await api('POST', '/messages', { raw: big });
    expect(r.status).toBe(413);
    expect(r.body.error).toEqual({ code: 'too_large', message: 'request body is larger than 65536 bytes (64 KiB)' });
    // exactly 64 KiB is read (and then refused for the body's length, not the request's)
    const fits = JSON.stringify(message({ body: '' }));
    const exact = await api('POST', '/messages', { raw: fits.replace('"body":""', `"body":"${'x'.repeat(64 * 1024 - fits.length)}"`) });
    expect(exact.status).toBe(413);
    expect(exact.body.error?.message).toMatch(/^body: is longer than/);
    // the rest of the app still has its own limit
    const outside = await fetch(`${base.replace(SERVER_API_BASE_PATH, '')}/echo-size`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ a: 'x'.repeat(100_000) }) });
    expect(outside.status).toBe(200);
  });

  it('room names: empty is bad_request, over 100 code points too_large, 100 emoji fit', async () => {
    const empty = await api('POST', '/rooms', { json: { name: '', owner: 'alice', members: [] } });
    expect(empty.status).toBe(400);
    expect(empty.body.error?.message).toBe('name: must not be empty');
    const long = await api('POST', '/rooms', { json: { name: 'n'.repeat(101), owner: 'alice', members: [] } });
    expect(long.status).toBe(413);
    expect(long.body.error).toEqual({ code: 'too_large', message: 'name: is longer than 100 characters' });
    const emoji = await api('POST', '/rooms', { json: { name: '🎉'.repeat(100), owner: 'alice', members: [] } });
    expect(emoji.status).toBe(201);
  });

  it('more than 200 members in one request is too_large naming the limit', async () => {
    const members = Array.from({ length: 201 }, (_, i) => `u${i}`);
    const r = await api('POST', '/rooms', { json: { name: 'Big', owner: 'alice', members } });
    expect(r.status).toBe(413);
    expect(r.body.error?.code).toBe('too_large');
    expect(r.body.error?.message).toMatch(/^members: .*at most 200 per request/);
    const ok = await api('POST', '/rooms', { json: { name: 'Big', owner: 'alice', members: members.slice(0, 200) } });
    expect(ok.status).toBe(201);
  });

  it('names every invalid field of a room creation, members by index', async () => {
    const r = await api('POST', '/rooms', { json: { name: '', owner: 'al ice', members: ['bob', 'c/arol'] } });
    expect(r.status).toBe(400);
    expect(r.body.error?.message).toMatch(/^name: must not be empty; owner: must be a user id .*; members\.1: must be a user id/);
  });

  it('checks path parameters and the paging query', async () => {
    const room = await api('GET', `/rooms/${encodeURIComponent('r 1')}`);
    expect(room.status).toBe(400);
    expect(room.body.error?.message).toMatch(/^room: must be a room id/);
    const member = await api('DELETE', '/rooms/r_1/members/bad%20id');
    expect(member.status).toBe(400);
    expect(member.body.error?.message).toMatch(/^userId: must be a user id/);
    const after = await api('GET', '/users/alice/rooms?after=r%201');
    expect(after.status).toBe(400);
    expect(after.body.error?.message).toMatch(/^after: must be a room id/);
    expect(fake.calls).toEqual([]);
  });
});

describe('Server API: domain errors', () => {
  it('not_found is 404', async () => {
    const r = await api('GET', '/rooms/r_404');
    expect(r.status).toBe(404);
    expect(r.body).toEqual({ error: { code: 'not_found', message: 'no room r_404' } });
  });

  it('a repeat of (from, id) answers the first result, and with other content 409 conflict', async () => {
    const first = await api('POST', '/messages', { json: message() });
    expect(first.status).toBe(200);
    const again = await api('POST', '/messages', { json: message() });
    expect(again.body).toEqual(first.body);
    const other = await api('POST', '/messages', { json: message({ body: 'changed' }) });
    expect(other.status).toBe(409);
    expect(other.body.error?.code).toBe('conflict');
  });

  it('forbidden is 403 and bad_request from the domain is 400', async () => {
    fake.failWith(new DomainError('forbidden', 'not allowed'));
    expect((await api('GET', '/rooms/r_1')).status).toBe(403);
    const created = await api('POST', '/rooms', { json: { name: 'T', owner: 'alice', members: [] } });
    const owner = await api('DELETE', `/rooms/${String(created.body.room)}/members/alice`);
    expect(owner.status).toBe(400);
    expect(owner.body.error?.code).toBe('bad_request');
  });

  it('rate_limited is 429 with retryAfterMs in the body and Retry-After in whole seconds', async () => {
    fake.failWith(new DomainError('rate_limited', 'too many messages into this room', { retryAfterMs: 2500 }));
    const r = await api('POST', '/messages', { json: message() });
    expect(r.status).toBe(429);
    expect(r.body).toEqual({ error: { code: 'rate_limited', message: 'too many messages into this room', retryAfterMs: 2500 } });
    expect(r.headers.get('retry-after')).toBe('3');
  });

  it('rate_limited without a hint still says when to retry', async () => {
    fake.failWith(new DomainError('rate_limited', 'slow down'));
    const r = await api('POST', '/messages', { json: message() });
    expect(r.status).toBe(429);
    expect(r.body.error?.retryAfterMs).toBe(1000);
    expect(r.headers.get('retry-after')).toBe('1');
  });

  it('UnavailableError is 503 with a message that says to retry and names no internal host', async () => {
    fake.failWith(new UnavailableError('SvPersist at http://10.0.0.7:3000 did not answer'));
    const r = await api('POST', '/messages', { json: message() });
    expect(r.status).toBe(503);
    expect(r.body.error?.code).toBe('unavailable');
    expect(r.body.error?.message).toMatch(/retry with the same id/);
    expect(r.text).not.toContain('10.0.0.7');
    expect(logs.lines.some((l) => l.level === 'warn' && String(l.err).includes('10.0.0.7'))).toBe(true);
  });

  it("DomainError unavailable is 503 with the domain's message", async () => {
    fake.failWith(new DomainError('unavailable', 'the broker did not confirm; retry with the same id'));
    const r = await api('POST', '/messages', { json: message() });
    expect(r.status).toBe(503);
    expect(r.body).toEqual({ error: { code: 'unavailable', message: 'the broker did not confirm; retry with the same id' } });
  });

  it('anything else is 500 internal with a generic message, logged with the error, no stack trace in the answer', async () => {
    fake.failWith(new TypeError('Cannot read properties of undefined (reading secretThing)'));
    const r = await api('POST', '/rooms', { json: { name: 'T', owner: 'alice', members: [] } });
    expect(r.status).toBe(500);
    expect(r.body).toEqual({ error: { code: 'internal', message: 'internal error; it has been logged' } });
    expect(r.text).not.toMatch(/secretThing|TypeError|\bat /);
    const logged = logs.lines.find((l) => l.level === 'error');
    expect(logged?.operation).toBe('createRoom');
    expect(JSON.stringify(logged?.err)).toContain('secretThing');
  });

  it('a domain answer that is not the documented shape is a 500, not passed on', async () => {
    const broken = { ...fake.domain, getRoom: async () => ({ room: 'r_1', name: 'T' }) as unknown as RoomInfo };
    const app = express().use(SERVER_API_BASE_PATH, createServerApi({ keys: [KEY], domain: broken, maxBodyChars: MAX_BODY_CHARS, log: logs.log }));
    const s = await listen(app, 0, '127.0.0.1');
    try {
      const res = await fetch(`http://127.0.0.1:${boundPort(s)}${SERVER_API_BASE_PATH}/rooms/r_1`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(res.status).toBe(500);
    } finally {
      await closeServer(s);
    }
  });
});

describe('Server API: routes', () => {
  it('creates a room (201), reads it, adds and removes a member, each answering the room', async () => {
    const created = await api('POST', '/rooms', { json: { name: 'Team', owner: 'alice', members: ['bob'] } });
    expect(created.status).toBe(201);
    expect(created.body).toEqual({ room: 'r_1', name: 'Team', owner: 'alice', members: ['alice', 'bob'] });
    expect(fake.calls[0]).toEqual({ op: 'createRoom', args: [{ name: 'Team', owner: 'alice', members: ['bob'] }] });

    const got = await api('GET', '/rooms/r_1');
    expect(got.status).toBe(200);
    expect(got.body).toEqual(created.body);

    const added = await api('POST', '/rooms/r_1/members', { json: { userId: 'dave' } });
    expect(added.status).toBe(200);
    expect(added.body.members).toEqual(['alice', 'bob', 'dave']);

    const removed = await api('DELETE', '/rooms/r_1/members/bob');
    expect(removed.status).toBe(200);
    expect(removed.body.members).toEqual(['alice', 'dave']);
    expect(fake.calls.map((c) => c.op)).toEqual(['createRoom', 'getRoom', 'addMember', 'removeMember']);
  });

  it('members may be left out of a room creation', async () => {
    const r = await api('POST', '/rooms', { json: { name: 'Solo', owner: 'alice' } });
    expect(r.status).toBe(201);
    expect(fake.calls[0]?.args[0]).toEqual({ name: 'Solo', owner: 'alice', members: [] });
  });

  it('posts a message to a user or into a room and answers msgId, ts and seq', async () => {
    const direct = await api('POST', '/messages', { json: message() });
    expect(direct.status).toBe(200);
    expect(direct.body).toEqual({ msgId: expect.any(String), ts: expect.any(Number), seq: 1 });
    await api('POST', '/rooms', { json: { name: 'Team', owner: 'alice', members: [] } });
    const inRoom = await api('POST', '/messages', { json: { id: 'k-2', from: 'bot-1', room: 'r_1', body: 'hi all' } });
    expect(inRoom.status).toBe(200);
    expect(fake.calls.at(-1)).toEqual({ op: 'postMessage', args: [{ id: 'k-2', from: 'bot-1', room: 'r_1', body: 'hi all' }] });
  });

  it("lists a user's rooms and passes ?after= to the domain for paging", async () => {
    for (const name of ['a', 'b', 'c']) await api('POST', '/rooms', { json: { name, owner: 'alice', members: [] } });
    const page1 = await api('GET', '/users/alice/rooms');
    expect(page1.status).toBe(200);
    expect(page1.body).toEqual({ rooms: [expect.objectContaining({ room: 'r_1', memberCount: 1 }), expect.objectContaining({ room: 'r_2' })], more: true });
    const page2 = await api('GET', '/users/alice/rooms?after=r_2');
    expect(page2.body).toEqual({ rooms: [{ room: 'r_3', name: 'c', owner: 'alice', memberCount: 1 }], more: false });
    expect(fake.calls.filter((c) => c.op === 'listUserRooms').map((c) => c.args)).toEqual([
      ['alice', undefined],
      ['alice', 'r_2'],
    ]);
  });

  it('an unknown route or method with a valid key is a 404 JSON error', async () => {
    for (const [method, path] of [
      ['GET', '/nope'],
      ['GET', '/messages'],
      ['PUT', '/rooms/r_1'],
    ] as const) {
      const r = await api(method, path);
      expect(r.status).toBe(404);
      expect(r.body.error?.code).toBe('not_found');
    }
  });

  it('counts requests by operation and code', async () => {
    const metrics = createMetrics({ service: 'SvWebsocket' });
    const app = express().use(SERVER_API_BASE_PATH, createServerApi({ keys: [KEY], domain: fake.domain, maxBodyChars: MAX_BODY_CHARS, log: logs.log, metrics }));
    const s = await listen(app, 0, '127.0.0.1');
    try {
      const url = `http://127.0.0.1:${boundPort(s)}${SERVER_API_BASE_PATH}`;
      await (await fetch(`${url}/rooms/r_9`, { headers: { authorization: `Bearer ${KEY}` } })).text();
      await (await fetch(`${url}/rooms/r_9`)).text();
      const text = await metrics.render();
      expect(text).toMatch(/simplechat_server_api_requests_total\{operation="getRoom",code="not_found"[^}]*\} 1/);
      expect(text).toMatch(/simplechat_server_api_requests_total\{operation="none",code="unauthorized"[^}]*\} 1/);
    } finally {
      await closeServer(s);
    }
  });

  it('mounted behind another body parser, it refuses to run without its own limit (500, logged)', async () => {
    const app = express()
      .use(express.json({ limit: '8mb' }))
      .use(SERVER_API_BASE_PATH, createServerApi({ keys: [KEY], domain: fake.domain, maxBodyChars: MAX_BODY_CHARS, log: logs.log }));
    const s = await listen(app, 0, '127.0.0.1');
    try {
      const res = await fetch(`http://127.0.0.1:${boundPort(s)}${SERVER_API_BASE_PATH}/messages`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(message()) });
      expect(res.status).toBe(500);
      expect(fake.calls).toEqual([]);
      expect(logs.lines.some((l) => l.level === 'error' && JSON.stringify(l.err).includes('ahead of the app'))).toBe(true);
    } finally {
      await closeServer(s);
    }
  });
});

describe('Server API: OpenAPI document', () => {
  it('is served without a key and validates as OpenAPI 3.1', async () => {
    const r = await api('GET', '/openapi.json', { key: null });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^application\/json/);
    expect(r.body.openapi).toBe('3.1.0');
    const { Validator } = await import('@seriousme/openapi-schema-validator');
    const validator = new Validator();
    const result = await validator.validate(r.body);
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
    expect(validator.version).toBe('3.1');
  });

  it('lists every route with bearer security, its request schema and the error shape', () => {
    const doc = serverApiOpenApi({ maxBodyChars: MAX_BODY_CHARS }) as {
      servers: { url: string }[];
      paths: Record<string, Record<string, { security?: unknown[]; requestBody?: unknown; responses: Record<string, unknown> }>>;
      components: { securitySchemes: Record<string, unknown>; schemas: Record<string, { properties?: Record<string, unknown> }>; responses: Record<string, unknown> };
    };
    expect(doc.servers).toEqual([{ url: '/api/v1' }]);
    const routes = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`));
    expect(routes.sort()).toEqual(
      ['POST /messages', 'POST /rooms', 'GET /rooms/{room}', 'POST /rooms/{room}/members', 'DELETE /rooms/{room}/members/{userId}', 'GET /users/{userId}/rooms', 'GET /openapi.json'].sort(),
    );
    expect(doc.components.securitySchemes.serverApiKey).toMatchObject({ type: 'http', scheme: 'bearer' });
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const op of Object.values(ops)) {
        if (path === '/openapi.json') expect(op.security).toEqual([]);
        else {
          expect(op.security).toEqual([{ serverApiKey: [] }]);
          expect(op.responses['401']).toEqual({ $ref: '#/components/responses/Unauthorized' });
          expect(op.responses['400']).toBeDefined();
        }
      }
    }
    expect(doc.paths['/messages']?.post?.requestBody).toMatchObject({ content: { 'application/json': { schema: { $ref: '#/components/schemas/PostMessageRequest' } } } });
    expect(doc.paths['/rooms']?.post?.responses['201']).toBeDefined();
    expect(doc.paths['/messages']?.post?.responses['409']).toEqual({ $ref: '#/components/responses/Conflict' });
    expect(doc.components.schemas.Error?.properties?.error).toMatchObject({ properties: { code: { enum: expect.arrayContaining(['bad_request', 'unauthorized', 'conflict', 'rate_limited', 'unavailable']) } } });
    expect(doc.components.schemas.PostMessageRequest?.properties?.body).toMatchObject({ maxLength: MAX_BODY_CHARS });
    expect(doc.components.responses.RateLimited).toMatchObject({ headers: { 'Retry-After': expect.any(Object) } });
  });
});

describe('SERVER_API_KEYS configuration', () => {
  const env = (over: Record<string, string>) => ({ JWT_SECRET: 'j'.repeat(40), INTERNAL_TOKEN: INTERNAL_TOKEN, ...over });

  it('is a comma-separated list, empty when unset', () => {
    expect(loadWsConfig({ env: env({ SERVER_API_KEYS: ` ${KEY} , ${PREVIOUS_KEY} ` }), envFile: false }).serverApiKeys).toEqual([KEY, PREVIOUS_KEY]);
    expect(loadWsConfig({ env: env({}), envFile: false }).serverApiKeys).toEqual([]);
    expect(() => loadWsConfig({ env: env({ SERVER_API_KEYS: 'a b' }), envFile: false })).toThrow(/SERVER_API_KEYS .*is invalid: must be comma-separated keys/);
  });

  it('production refuses a short key, the development key and a key equal to INTERNAL_TOKEN, one line each, without printing them', () => {
    const load = () =>
      loadWsConfig({ env: env({ ENVIRONMENT: 'production', SERVER_API_KEYS: `short,development-only-server-api-key-do-not-use-in-production,${INTERNAL_TOKEN}` }), envFile: false });
    expect(load).toThrow(ConfigError);
    let message = '';
    try {
      load();
    } catch (err) {
      message = (err as Error).message;
    }
    const lines = message.split('\n').filter((l) => l.includes('SERVER_API_KEYS'));
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/key 1 of 3\) is 5 bytes, too short for production/);
    expect(lines[1]).toMatch(/key 2 of 3\) is the development value/);
    expect(lines[2]).toMatch(/key 3 of 3\) is the same as INTERNAL_TOKEN/);
    expect(message).not.toContain(INTERNAL_TOKEN);
    expect(loadWsConfig({ env: env({ ENVIRONMENT: 'production', SERVER_API_KEYS: `${KEY},${PREVIOUS_KEY}` }), envFile: false }).serverApiKeys).toHaveLength(2);
  });
});
