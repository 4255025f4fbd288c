import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../../test/helpers';
import { startDiscover, connectAdmin, deleteKeysUnder, PREVIOUS_TOKEN, type Harness, type AdminRedis } from './harness';

let h: Harness;
let admin: AdminRedis;

beforeAll(async () => {
  h = await startDiscover();
  admin = await connectAdmin();
  await eventually(async () => expect((await h.api('GET', '/health')).status).toBe(200));
});

afterAll(async () => {
  await h?.close();
  if (admin) {
    await deleteKeysUnder(admin, h.keyPrefix);
    await admin.close();
  }
});

const url = 'http://127.0.0.1:9/ws-http';
/** Every internal route, with a valid body, so that only the token decides. */
const ROUTES: Array<[method: string, path: string, body?: unknown]> = [
  ['PUT', '/internal/instances/ws-http', { url }],
  ['DELETE', '/internal/instances/ws-http'],
  ['POST', '/internal/claims', { instanceId: 'ws-http', url, add: ['u1'], remove: [] }],
  ['PUT', '/internal/instances/ws-http/claims', { url, users: ['u1'] }],
  ['POST', '/internal/lookup', { users: ['u1'] }],
  ['GET', '/internal/users/u1'],
  ['POST', '/internal/hints', { instanceId: 'ws-http', users: ['u1'] }],
  ['GET', '/internal/no-such-route'],
  ['GET', '/internal'],
];

function expectJsonError(res: { status: number; body: unknown; contentType: string | null }, status: number): void {
  expect(res.status).toBe(status);
  expect(res.contentType).toMatch(/^application\/json/);
  expect(res.body).toEqual({ error: expect.any(String) });
}

describe('internal authentication', () => {
  it.each(ROUTES)('%s %s answers 401 JSON without a token and with a wrong one', async (method, path, body) => {
    expectJsonError(await h.api(method, path, body, { token: null }), 401);
    expectJsonError(await h.api(method, path, body, { token: 'not-the-token' }), 401);
    expectJsonError(await h.api(method, path, body, { token: '' }), 401);
  });

  it('an unauthenticated request with a malformed body gets 401, not 400 (auth runs before parsing)', async () => {
    expectJsonError(await h.api('POST', '/internal/lookup', undefined, { token: null, rawBody: '{not json' }), 401);
  });

  it('nothing is written by a refused request', async () => {
    await h.api('POST', '/internal/claims', { instanceId: 'ws-refused', url, add: ['mallory'] }, { token: 'wrong' });
    expect(await admin.exists(`${h.keyPrefix}user:mallory`)).toBe(0);
  });

  it('the previous token is accepted during a rotation, as is the current one', async () => {
    const previous = await h.api('PUT', '/internal/instances/ws-rotate', { url }, { token: PREVIOUS_TOKEN });
    expect(previous.status).toBe(200);
    const current = await h.api('POST', '/internal/lookup', { users: ['u1'] });
    expect(current.status).toBe(200);
  });

  it('an unknown internal path answers 404 JSON once authenticated', async () => {
    expectJsonError(await h.api('GET', '/internal/no-such-route'), 404);
    expectJsonError(await h.api('GET', '/internal/claims'), 404);
  });
});

describe('input validation', () => {
  const BAD: Array<[what: string, method: string, path: string, body: unknown, rawBody?: string]> = [
    ['a body that is not JSON', 'POST', '/internal/lookup', undefined, '{"users": ['],
    ['a lookup without users', 'POST', '/internal/lookup', {}],
    ['a lookup with a bad user id', 'POST', '/internal/lookup', { users: ['ok', 'not ok!'] }],
    ['a lookup with a non-string user id', 'POST', '/internal/lookup', { users: [42] }],
    ['a lookup with an over-long user id', 'POST', '/internal/lookup', { users: ['x'.repeat(65)] }],
    ['a lookup over the batch limit', 'POST', '/internal/lookup', { users: Array.from({ length: 10_001 }, (_, i) => `u${i}`) }],
    ['a JSON array instead of an object', 'POST', '/internal/lookup', [1, 2]],
    ['a heartbeat without url', 'PUT', '/internal/instances/ws-a', {}],
    ['a heartbeat with a url that is not a URL', 'PUT', '/internal/instances/ws-a', { url: 'nope' }],
    ['a heartbeat with a bad instance id', 'PUT', '/internal/instances/bad%20id', { url }],
    ['claims without instanceId', 'POST', '/internal/claims', { url, add: ['u1'] }],
    ['claims without url', 'POST', '/internal/claims', { instanceId: 'ws-a', add: ['u1'] }],
    ['claims with a bad user id', 'POST', '/internal/claims', { instanceId: 'ws-a', url, add: ['a b'] }],
    ['claims with a bad instance id', 'POST', '/internal/claims', { instanceId: 'ws/a', url, add: ['u1'] }],
    ['a replace without users', 'PUT', '/internal/instances/ws-a/claims', { url }],
    ['a replace with a bad instance id', 'PUT', '/internal/instances/ws%3Aa/claims', { url, users: [] }],
    ['a goodbye with a bad instance id', 'DELETE', '/internal/instances/ws%3Aa', undefined],
    ['a user query with a bad user id', 'GET', '/internal/users/no%20pe', undefined],
    ['hints without instanceId', 'POST', '/internal/hints', { users: ['u1'] }],
    ['hints with a bad user id', 'POST', '/internal/hints', { instanceId: 'ws-a', users: [''] }],
  ];

  it.each(BAD)('%s answers 400 with a JSON error', async (_what, method, path, body, rawBody) => {
    const res = await h.api(method, path, body, rawBody === undefined ? {} : { rawBody });
    expectJsonError(res, 400);
    expect(res.body).toEqual({ error: expect.stringMatching(/^(bad request: |request body is not valid JSON)/) });
  });

  it('a rejected claim writes nothing', async () => {
    await h.api('POST', '/internal/claims', { instanceId: 'ws-a', url, add: ['good', 'b@d'] });
    expect(await admin.exists(`${h.keyPrefix}user:good`)).toBe(0);
  });

  it('a body over the size limit answers 413 JSON', async () => {
    const res = await h.api('POST', '/internal/lookup', undefined, { rawBody: `{"users":["${'x'.repeat(3 * 1024 * 1024)}"]}` });
    expectJsonError(res, 413);
  });
});

describe('health', () => {
  it('GET /health answers 200 with Redis up, without a token', async () => {
    const res = await h.api('GET', '/health', undefined, { token: null });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok', service: 'SvDiscover', dependencies: { redis: 'up' } });
  });

  it('an unknown public path answers 404 JSON', async () => {
    expectJsonError(await h.api('GET', '/nope', undefined, { token: null }), 404);
  });
});
