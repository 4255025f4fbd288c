/**
 * The CLI scripts (npm start, npm run db:create, scripts/ensure-services.ts) as
 * real processes against the real services: a setting the user got wrong is
 * one line naming the variable and what to do, exit 1, no stack trace, and
 * nothing is started on its behalf.
 */
import { describe, it, expect, beforeAll, afterAll, inject } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { SignJWT } from 'jose';
import { ProtocolSocket } from '@simplechat/shared';
import { services } from './services';
import { eventually } from './helpers';
import { removeIsolated } from './cluster';

const ROOT = resolve(__dirname, '..');
const TS_NODE = resolve(ROOT, 'node_modules/.bin/ts-node');
let dir = '';
let runs = 0;

/** Writes `settings` as a settings file of its own and returns its path (for ENV_FILE). */
function settingsFile(settings: Record<string, string>): string {
  const envFile = join(dir, `${++runs}.env`);
  writeFileSync(envFile, Object.entries(settings).map(([k, v]) => `${k}=${v}\n`).join(''));
  return envFile;
}

/** Runs a script with only PATH from this environment and `settings` as its .env (ENV_FILE). */
function run(script: string, args: string[], settings: Record<string, string>, extraEnv: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  const envFile = settingsFile(settings);
  return new Promise((resolvePromise) => {
    const child = spawn(TS_NODE, ['--transpile-only', script, ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ENV_FILE: envFile, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    // SIGINT, not SIGKILL: if a run gets as far as starting the cluster, start.ts stops it.
    const timer = setTimeout(() => child.kill('SIGINT'), 50_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, out, err });
    });
  });
}

function listenOn(port: number, host = '127.0.0.1'): Promise<Server | undefined> {
  return new Promise((resolvePromise) => {
    const server = createServer();
    server.once('error', () => resolvePromise(undefined));
    server.listen(port, host, () => resolvePromise(server));
  });
}

const portOf = (server: Server) => (server.address() as { port: number }).port;
const close = (server: Server) => new Promise<void>((r) => server.close(() => r()));

/** The ports the clusters of this file may listen on: TEST_PORTS ("3400-3499"), else 20000-31999. */
const PORTS = (() => {
  const [, first, last] = /^(\d+)-(\d+)$/.exec(process.env.TEST_PORTS ?? '') ?? [];
  return first && last ? { first: Number(first), last: Number(last) } : { first: 20_000, last: 31_999 };
})();

/**
 * The first of `n` consecutive free ports of PORTS, below the kernel's ephemeral range (32768
 * and up): a port from listen(0) is ephemeral, and the one after it can be taken at any moment
 * by an outgoing connection of a test running beside this one.
 */
async function freeBlock(n: number): Promise<number> {
  for (;;) {
    const base = PORTS.first + Math.floor(Math.random() * (PORTS.last - PORTS.first + 2 - n));
    const held: Server[] = [];
    for (let i = 0; i < n; i++) {
      const server = await listenOn(base + i);
      if (!server) break;
      held.push(server);
    }
    await Promise.all(held.map(close));
    if (held.length === n) return base;
  }
}

function isListening(port: number): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), resolvePromise(true)));
    socket.once('error', () => resolvePromise(false));
  });
}

/** Settings under which npm start would get as far as starting the cluster, on ports nobody uses. */
async function goodSettings(): Promise<Record<string, string>> {
  const { redisUrl, amqpUrl } = services();
  const base = await freeBlock(4);
  return {
    REDIS_URL: redisUrl,
    AMQP_URL: amqpUrl,
    DATABASE_URL: inject('databaseUrl'),
    DISCOVER_PORT: String(base),
    PERSIST_PORT: String(base + 1),
    // and base + 3 for the second gateway
    WS_PORT: String(base + 2),
  };
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sc-start-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('npm start: services at a wrong address', () => {
  const cases = [
    { service: 'Redis', variable: 'REDIS_URL', url: 'redis://127.0.0.1:1' },
    { service: 'RabbitMQ', variable: 'AMQP_URL', url: 'amqp://guest:guest@127.0.0.1:1' },
    { service: 'PostgreSQL', variable: 'DATABASE_URL', url: 'postgres://postgres@127.0.0.1:1/simplechat' },
  ];
  for (const c of cases) {
    it(`${c.variable} at a port of this machine other than ${c.service}'s own is reported in one line and no ${c.service} is started there`, async () => {
      const r = await run('scripts/start.ts', [], { ...(await goodSettings()), [c.variable]: c.url });
      expect(r.err).toBe(`start: cannot reach ${c.service} at 127.0.0.1:1 (${c.variable}); start it or fix ${c.variable} in .env\n`);
      expect(r.code).toBe(1);
      expect(await isListening(1)).toBe(false);
    }, 60_000);
  }

  it('a login the running PostgreSQL refuses is named as such, and no PostgreSQL is started', async () => {
    const url = new URL(inject('databaseUrl'));
    url.username = 'sc_no_such_role';
    const r = await run('scripts/start.ts', [], { ...(await goodSettings()), DATABASE_URL: url.toString() });
    expect(r.err).toBe(`start: PostgreSQL at ${url.hostname}:${url.port || 5432} answers but rejects DATABASE_URL (role "sc_no_such_role" does not exist); fix DATABASE_URL in .env\n`);
    expect(r.code).toBe(1);
  }, 60_000);
});

/** Stopped before anything was checked or started: exactly these lines on stderr, nothing on stdout, exit 1. */
function expectStoppedUpFront(r: { code: number | null; out: string; err: string }, lines: string[]): void {
  expect(r.err).toBe([...lines, ''].join('\n'));
  expect(r.code).toBe(1);
  expect(r.out).toBe('');
}

describe('npm start: settings that cannot work stop it before anything is checked or started', () => {
  it('malformed URLs name their variable and the expected form, one line each, without the password', async () => {
    const r = await run('scripts/start.ts', [], { ...(await goodSettings()), DATABASE_URL: 'notaurl', REDIS_URL: 'redis//127.0.0.1', AMQP_URL: 'amqp//guest:s3cret@127.0.0.1' });
    expectStoppedUpFront(r, [
      'start: REDIS_URL = "redis//127.0.0.1" is not a URL of the form redis://[user:password@]host:port; fix it in .env',
      'start: AMQP_URL = "***@127.0.0.1" is not a URL of the form amqp://user:password@host:port; fix it in .env',
      'start: DATABASE_URL = "notaurl" is not a URL of the form postgres://user[:password]@host:port/database; fix it in .env',
    ]);
  }, 60_000);

  it('a port variable or --ws that is no number is named with its value', async () => {
    const r = await run('scripts/start.ts', ['--ws', 'x'], { ...(await goodSettings()), WS_PORT: 'abc', PERSIST_PORT: '70000' });
    expectStoppedUpFront(r, [
      'start: --ws = "x" must be a whole number from 1 to 32',
      'start: PERSIST_PORT = "70000" is not a port; set it to a whole number from 1 to 65535 in .env',
      'start: WS_PORT = "abc" is not a port; set it to a whole number from 1 to 65535 in .env',
    ]);
  }, 60_000);

  it('every busy port is named with the variable that sets it, before anything is started', async () => {
    let persist: Server | undefined;
    while (!persist) persist = await listenOn(await freeBlock(1));
    // WS_PORT itself free, WS_PORT+1 (the second gateway) busy
    let wsBase = 0;
    let gateway2: Server | undefined;
    while (!gateway2) {
      wsBase = await freeBlock(2);
      gateway2 = await listenOn(wsBase + 1);
    }
    try {
      const r = await run('scripts/start.ts', [], { ...(await goodSettings()), PERSIST_PORT: String(portOf(persist)), WS_PORT: String(wsBase) });
      expect(r.err).toBe(`start: ports ${portOf(persist)} (PERSIST_PORT), ${wsBase + 1} (WS_PORT+1) are already in use; stop what uses them or change PERSIST_PORT, WS_PORT in .env\n`);
      expect(r.code).toBe(1);
      expect(r.out).toBe('');
    } finally {
      await close(persist);
      await close(gateway2);
    }
  }, 60_000);

  it('two services given the same port are named', async () => {
    const settings = await goodSettings();
    const r = await run('scripts/start.ts', [], { ...settings, PERSIST_PORT: settings.DISCOVER_PORT as string });
    expect(r.err).toBe(`start: DISCOVER_PORT and PERSIST_PORT are both port ${settings.DISCOVER_PORT}; give each service its own port in .env (the gateways use WS_PORT to WS_PORT+1)\n`);
    expect(r.code).toBe(1);
  }, 60_000);
});

describe('npm run db:create', () => {
  it('a malformed DATABASE_URL is one line naming it, no stack trace', async () => {
    const r = await run('scripts/db.ts', ['create'], { DATABASE_URL: 'notaurl' });
    expect(r.err).toBe('db:create: DATABASE_URL = "notaurl" is not a URL of the form postgres://user[:password]@host:port/database; fix it in .env\n');
    expect(r.code).toBe(1);
  }, 60_000);

  it('a database name PostgreSQL cannot take is not reported as PostgreSQL being down', async () => {
    const url = new URL(inject('databaseUrl'));
    url.pathname = '/bad-name';
    const r = await run('scripts/db.ts', ['create'], { DATABASE_URL: url.toString() });
    expect(r.err).toBe(`db:create: could not create bad-name at ${url.host}: database name 'bad-name' must be 1-63 characters of A-Z a-z 0-9 _; check that PostgreSQL runs there and DATABASE_URL in .env\n`);
    expect(r.code).toBe(1);
  }, 60_000);
});

describe('scripts/ensure-services.ts', () => {
  it('names the TEST_ variable it used and starts nothing at a non-default port', async () => {
    const { amqpUrl } = services();
    const r = await run('scripts/ensure-services.ts', [], {}, { TEST_REDIS_URL: 'redis://127.0.0.1:1', TEST_AMQP_URL: amqpUrl, TEST_DATABASE_URL: inject('databaseUrl') });
    expect(r.err).toBe('services: cannot reach Redis at 127.0.0.1:1 (TEST_REDIS_URL); start it or fix TEST_REDIS_URL in .env\n');
    expect(r.code).toBe(1);
    expect(await isListening(1)).toBe(false);
  }, 60_000);
});

/** Settings of a cluster npm start runs for a test: its own key and queue prefixes, tokens it can sign. */
async function clusterSettings(): Promise<Record<string, string>> {
  const tag = `sc-start-${process.pid}-${++runs}`;
  return {
    ...(await goodSettings()),
    KEY_PREFIX: `${tag}:`,
    QUEUE_PREFIX: `${tag}.`,
    INTERNAL_TOKEN: 'start-script-test-internal-token',
    JWT_SECRET: 'start-script-test-jwt-secret-0123456789',
  };
}

/** npm start running with `settings` as its .env: everything it printed so far, and Ctrl-C (resolves with its exit code). */
function startCluster(settings: Record<string, string>): { out: () => string; interrupt: () => Promise<number | null> } {
  const envFile = settingsFile(settings);
  const child = spawn(TS_NODE, ['--transpile-only', 'scripts/start.ts'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ENV_FILE: envFile }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  return {
    out: () => out,
    interrupt: () => {
      child.kill('SIGINT');
      return exited;
    },
  };
}

const removeCluster = (settings: Record<string, string>) =>
  removeIsolated({ redisUrl: settings.REDIS_URL as string, amqpUrl: settings.AMQP_URL as string, keyPrefix: settings.KEY_PREFIX as string, queuePrefix: settings.QUEUE_PREFIX as string });

describe('npm start: ports changed in .env', () => {
  it('the gateways reach the SvDiscover and SvPersist started here, whatever DISCOVER_URL and PERSIST_URL still say', async () => {
    const settings: Record<string, string> = {
      ...(await clusterSettings()),
      // left at the defaults while the ports moved: what a user who only changed the ports has
      DISCOVER_URL: 'http://127.0.0.1:1',
      PERSIST_URL: 'http://127.0.0.1:1',
    };
    const cluster = startCluster(settings);
    try {
      await eventually(() => expect(cluster.out()).toContain('cluster is up'), { timeoutMs: 45_000 });
      expect(cluster.out()).toContain(`DISCOVER_URL is http://127.0.0.1:1; the gateways use the SvDiscover started here, http://127.0.0.1:${settings.DISCOVER_PORT}`);
      expect(cluster.out()).toContain(`PERSIST_URL is http://127.0.0.1:1; the gateways use the SvPersist started here, http://127.0.0.1:${settings.PERSIST_PORT}`);
      const health = (await (await fetch(`http://127.0.0.1:${settings.WS_PORT}/health`)).json()) as { dependencies: Record<string, string> };
      expect(health.dependencies).toMatchObject({ discover: 'up', persist: 'up' });
    } finally {
      expect(await cluster.interrupt()).toBe(0);
      await removeCluster(settings);
    }
  }, 90_000);
});

/** Opens a gateway's /ws at `port` and registers as `userId` with a token signed with the cluster's JWT_SECRET. */
async function connectAs(settings: Record<string, string>, userId: string, port: number): Promise<ProtocolSocket> {
  const token = await new SignJWT({})
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(userId)
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(settings.JWT_SECRET));
  const socket = await ProtocolSocket.open(`ws://127.0.0.1:${port}/ws`);
  const reg = await socket.register(token);
  if (reg.type !== 'registered') throw new Error(`register at ${port} failed: ${JSON.stringify(reg)}`);
  return socket;
}

describe('npm start: a process that exits on its own', () => {
  it('a killed gateway is restarted while the other serves its clients, its clients reconnect to it, and Ctrl-C during a pending restart stops everything', async () => {
    const settings = await clusterSettings();
    const ws1 = Number(settings.WS_PORT);
    const ws2 = ws1 + 1;
    const cluster = startCluster(settings);
    const sockets: ProtocolSocket[] = [];
    const connect = async (userId: string, port: number) => {
      const socket = await connectAs(settings, userId, port);
      sockets.push(socket);
      return socket;
    };
    try {
      await eventually(() => expect(cluster.out()).toContain('cluster is up'), { timeoutMs: 45_000 });
      const alice = await connect('alice', ws1);
      const bob = await connect('bob', ws1);
      const carol = await connect('carol', ws2);

      process.kill(Number(/ws-2 +pid (\d+)/.exec(cluster.out())?.[1]), 'SIGKILL');
      await eventually(() => expect(cluster.out()).toContain('[simplechat] ws-2 exited (SIGKILL); restarting it in 2 s (restart 1)\n'), { timeoutMs: 10_000 });
      expect(await carol.waitForClose()).toBe(1006);
      // ws-1 serves its clients while ws-2 restarts
      expect((await alice.request({ type: 'send', to: 'bob', body: 'while ws-2 restarts' })).type).toBe('ack');
      await bob.waitForMessage((m) => m.body === 'while ws-2 restarts');

      const pid = await eventually(
        () => {
          const up = /\[simplechat\] ws-2 is up again \(pid (\d+)\)\n/.exec(cluster.out());
          expect(up).not.toBeNull();
          return Number(up?.[1]);
        },
        { timeoutMs: 30_000 },
      );
      const carolAgain = await connect('carol', ws2);
      expect((await alice.request({ type: 'send', to: 'carol', body: 'after the restart' })).type).toBe('ack');
      await carolAgain.waitForMessage((m) => m.body === 'after the restart');

      // killed again soon after it came back: it waits twice as long
      process.kill(pid, 'SIGKILL');
      await eventually(() => expect(cluster.out()).toContain('[simplechat] ws-2 exited (SIGKILL); restarting it in 4 s (restart 2)\n'), { timeoutMs: 10_000 });
      expect(await cluster.interrupt()).toBe(0);
      expect(cluster.out()).toMatch(/restart 2\)\n[^]*\[simplechat\] stopped\n$/);
      expect(cluster.out().match(/ws-2 is up again/g)).toHaveLength(1);
      // Ctrl-C closed ws-1's clients with 1001 (going away) and nothing listens on any port any more
      expect(await alice.waitForClose()).toBe(1001);
      const ports = [settings.DISCOVER_PORT, settings.PERSIST_PORT, ws1, ws2].map(Number);
      expect(await Promise.all(ports.map(isListening))).toEqual([false, false, false, false]);
    } finally {
      for (const socket of sockets) socket.close();
      await cluster.interrupt();
      await removeCluster(settings);
    }
  }, 120_000);
});

describe('npm start: small slips', () => {
  it('an unknown flag says which flags npm start takes', async () => {
    const r = await run('scripts/start.ts', ['--bogus'], await goodSettings());
    expect(r.err).toBe("start: Unknown option '--bogus'; npm start takes only --ws N (after --: npm start -- --ws 4) and --help\n");
    expect(r.code).toBe(1);
  }, 60_000);

  it('a variable no service reads is named (a misspelling is otherwise silently ignored)', async () => {
    // a setting that stops it right after the note, before anything is started
    const r = await run('scripts/start.ts', [], { ...(await goodSettings()), REDIS_ULR: 'redis://127.0.0.1:6379', REDIS_URL: 'redis://127.0.0.1:1' });
    expect(r.out).toMatch(/\.env sets variables no service reads \(misspelled\?\): REDIS_ULR\n/);
    expect(r.code).toBe(1);
  }, 60_000);
});
