import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../../test/helpers';
import { startDiscover, type Harness } from './harness';

const url = 'http://127.0.0.1:9/ws-x';
/** Internal routes with valid bodies: each must reach Redis. */
const ROUTES: Array<[method: string, path: string, body?: unknown]> = [
  ['PUT', '/internal/instances/ws-x', { url }],
  ['DELETE', '/internal/instances/ws-x'],
  ['POST', '/internal/claims', { instanceId: 'ws-x', url, add: ['u1'], remove: ['u2'] }],
  ['PUT', '/internal/instances/ws-x/claims', { url, users: ['u1'] }],
  ['POST', '/internal/lookup', { users: ['u1'] }],
  ['GET', '/internal/users/u1'],
  ['POST', '/internal/hints', { instanceId: 'ws-x', users: ['u1'] }],
];

async function expectUnavailable(h: Harness, redisUrl: string, withinMs: number): Promise<void> {
  for (const [method, path, body] of ROUTES) {
    const startedAt = Date.now();
    const res = await h.api(method, path, body);
    expect({ route: `${method} ${path}`, status: res.status, body: res.body }).toEqual({
      route: `${method} ${path}`,
      status: 503,
      body: { error: expect.stringContaining(`redis unavailable at ${redisUrl}`) },
    });
    expect(Date.now() - startedAt).toBeLessThan(withinMs);
  }
  const health = await h.api('GET', '/health', undefined, { token: null });
  expect(health.status).toBe(503);
  expect(health.body).toEqual({ status: 'down', service: 'SvDiscover', dependencies: { redis: 'down' } });
}

describe('Redis unreachable from the start', () => {
  let h: Harness | undefined;
  afterAll(async () => {
    await h?.close();
  });

  it('/health and every internal route answer 503 JSON at once, without hanging or crashing, while the sweeper keeps retrying', async () => {
    h = await startDiscover({ redisUrl: 'redis://127.0.0.1:1', sweepIntervalMs: 20 });
    // at once: a service that waited for Redis would take its 1 s timeout on every try; a slow
    // machine gets another try
    const service = h;
    await eventually(() => expectUnavailable(service, 'redis://127.0.0.1:1', 500));
    // several sweeper ticks have failed by now; the service still answers, and auth still comes first
    expect((await h.api('POST', '/internal/lookup', { users: ['u1'] }, { token: null })).status).toBe(401);
    expect((await h.api('POST', '/internal/lookup', { users: ['bad id'] })).status).toBe(400);
    await eventually(() => expectUnavailable(service, 'redis://127.0.0.1:1', 500));
  });
});

const hasRedisServer = spawnSync('redis-server', ['--version']).status === 0;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** A private, memory-only Redis that the test can kill, freeze and restart. */
function startRedisServer(port: number, dir: string): ChildProcess {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  child.on('error', () => undefined);
  return child;
}

async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGCONT');
  child.kill('SIGKILL');
  await exited;
}

describe.skipIf(!hasRedisServer)('Redis going away and coming back (private redis-server)', () => {
  let h: Harness | undefined;
  let redis: ChildProcess | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    // Redis first: a failed assertion may have left it frozen, and it must not outlive the run
    await stop(redis);
    await h?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a service started before Redis recovers by itself, answers 503 while Redis is killed or frozen, and learns renewed=false after a restart', async () => {
    const port = await freePort();
    const redisUrl = `redis://127.0.0.1:${port}`;
    dir = mkdtempSync(join(tmpdir(), 'sc-discover-redis-'));
    h = await startDiscover({ redisUrl, leaseMs: 5_000 });
    const service = h;
    await eventually(() => expectUnavailable(service, redisUrl, 500));

    redis = startRedisServer(port, dir);
    await eventually(async () => expect((await service.api('GET', '/health')).status).toBe(200));
    expect((await service.api('PUT', '/internal/instances/ws-x', { url })).body).toMatchObject({ renewed: false });
    expect((await service.api('POST', '/internal/claims', { instanceId: 'ws-x', url, add: ['u1'] })).status).toBe(204);
    expect((await service.api('PUT', '/internal/instances/ws-x', { url })).body).toMatchObject({ renewed: true });

    // frozen: the connection stays open but nothing answers; the command timeout (1 s here) bounds each request
    redis.kill('SIGSTOP');
    const frozenAt = Date.now();
    const frozen = await service.api('POST', '/internal/lookup', { users: ['u1'] });
    expect(frozen.status).toBe(503);
    expect(Date.now() - frozenAt).toBeLessThan(3_000);
    expect((await service.api('GET', '/health')).status).toBe(503);
    redis.kill('SIGCONT');
    await eventually(async () => expect((await service.api('GET', '/health')).status).toBe(200));
    expect((await service.api('GET', '/internal/users/u1')).body).toEqual({ userId: 'u1', instances: [{ instanceId: 'ws-x', url }] });

    // killed: requests fail fast, then a restarted (empty) Redis is picked up again
    await stop(redis);
    await eventually(() => expectUnavailable(service, redisUrl, 500));
    redis = startRedisServer(port, dir);
    await eventually(async () => expect((await service.api('GET', '/health')).status).toBe(200));
    expect((await service.api('PUT', '/internal/instances/ws-x', { url })).body).toMatchObject({ renewed: false });
    expect((await service.api('GET', '/internal/users/u1')).body).toEqual({ userId: 'u1', instances: [] });
  });
  it('close() while a request waits on a frozen Redis lets that request finish (503) and returns within the Redis timeout', async () => {
    const port = await freePort();
    dir = mkdtempSync(join(tmpdir(), 'sc-discover-redis-'));
    redis = startRedisServer(port, dir);
    h = await startDiscover({ redisUrl: `redis://127.0.0.1:${port}` });
    const service = h;
    await eventually(async () => expect((await service.api('GET', '/health')).status).toBe(200));
    // warm a keep-alive connection, as SvWebsocket's pool does
    expect((await service.api('POST', '/internal/lookup', { users: ['u1'] })).status).toBe(200);
    let arrived = 0;
    service.service.server?.on('request', () => (arrived += 1));
    redis.kill('SIGSTOP');
    const inFlight = service.api('POST', '/internal/lookup', { users: ['u1'] });
    await eventually(() => expect(arrived).toBe(1));
    const closingAt = Date.now();
    await service.close();
    // bounded by the Redis timeout (1 s here), not by the 5 s keep-alive timeout of the connection
    expect(Date.now() - closingAt).toBeLessThan(2_500);
    expect((await inFlight).status).toBe(503);
  });
});
