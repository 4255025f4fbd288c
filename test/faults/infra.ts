/**
 * Private Redis, RabbitMQ and PostgreSQL for the fault suite, started from the
 * installed binaries on free loopback ports in temporary directories, so that
 * killing them harms nothing else on the machine. Started once per suite;
 * scenarios stop and start them through the handles here.
 *
 * The suite runs as root (as the development machines and CI do): Postgres
 * refuses root and RabbitMQ wants its own user, so both run as their system
 * users on directories those users own.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import { Client } from 'pg';
import { createDatabase, migrate } from '../../scripts/lib/db';
import { freePort, startProc, stopProc, tempDir, waitUntil, removeDir, type Proc } from './procs';
import { startRedisCluster, type RedisClusterHandle } from '../clusters/redis-cluster';

export interface Service {
  readonly name: string;
  readonly url: string;
  readonly proc: Proc | undefined;
  start(): Promise<number>;
  /** graceful stop (SIGTERM/SIGINT as the server expects), or SIGKILL with hard=true */
  stop(hard?: boolean): Promise<void>;
  isUp(): Promise<boolean>;
}

export interface Infra {
  redis: Service;
  rabbit: Service;
  postgres: Service;
  /** a migrated template database; scenarios copy it */
  templateDb: string;
  /** a Redis Cluster the services use instead of `redis` (REDIS_CLUSTER_NODES), when asked for */
  redisCluster?: RedisClusterHandle;
  databaseUrl(name: string): string;
  createScenarioDb(name: string): Promise<string>;
  dir: string;
  close(): Promise<void>;
}

/** As root, run as the service's own user (Postgres refuses root); otherwise as ourselves. */
/** The uid and gid to run a service as (when this process is root and may switch). */
export function runAs(name: string): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  const uid = Number(execFileSync('id', ['-u', name]).toString().trim());
  const gid = Number(execFileSync('id', ['-g', name]).toString().trim());
  return { uid, gid };
}

const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';

/** One line saying what to install when a server binary is missing. */
function checkBinaries(): void {
  const missing: string[] = [];
  const onPath = (bin: string) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
  if (!onPath('redis-server')) missing.push('redis-server');
  if (!existsSync(RABBITMQ_SERVER)) missing.push('rabbitmq-server');
  if (!existsSync(pgBin('initdb')) && !onPath('initdb')) missing.push('postgresql');
  if (missing.length) throw new Error(`the fault suite starts its own servers and needs their binaries: install them (Debian/Ubuntu: apt-get install -y ${missing.join(' ')})`);
}

/** A Postgres program of the newest installed version (Debian keeps them off PATH). */
export function pgBin(name: string): string {
  const base = '/usr/lib/postgresql';
  if (existsSync(base)) {
    const versions = readdirSync(base).sort((a, b) => Number(b) - Number(a));
    for (const v of versions) {
      const p = join(base, v, 'bin', name);
      if (existsSync(p)) return p;
    }
  }
  return name; // on PATH
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host: '127.0.0.1', port });
    s.setTimeout(500);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
    s.once('timeout', () => (s.destroy(), resolve(false)));
  });
}

function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host: '127.0.0.1', port });
    s.setTimeout(500);
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => (s.destroy(), resolve(d.toString().startsWith('+PONG'))));
    s.once('error', () => resolve(false));
    s.once('timeout', () => (s.destroy(), resolve(false)));
  });
}

const baseEnv = (): NodeJS.ProcessEnv => ({ PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin', LANG: 'C.UTF-8' });

function redisService(dir: string, port: number): Service {
  const data = join(dir, 'redis');
  mkdirSync(data, { recursive: true });
  let proc: Proc | undefined;
  const url = `redis://127.0.0.1:${port}`;
  const svc: Service = {
    name: 'redis',
    url,
    get proc() {
      return proc;
    },
    async start() {
      const t0 = Date.now();
      // keeps nothing on disk: a restart comes back empty
      proc = startProc('redis', 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', data, '--protected-mode', 'yes'], {
        env: baseEnv(),
        logFile: join(dir, 'redis.log'),
      });
      await waitUntil('redis up', () => redisPing(port), 15_000, 50);
      return Date.now() - t0;
    },
    async stop(hard = false) {
      if (proc) await stopProc(proc, hard ? 'SIGKILL' : 'SIGTERM', 5000);
    },
    isUp: () => redisPing(port),
  };
  return svc;
}

/** Whether a broker at `url` accepts an AMQP connection (within 2 s). */
export async function amqpAnswers(url: string): Promise<boolean> {
  try {
    const c = await amqp.connect(url, { timeout: 2000 });
    c.on('error', () => undefined);
    await c.close();
    return true;
  } catch {
    return false;
  }
}

function rabbitService(dir: string, port: number, distPort: number): Service {
  const home = join(dir, 'rabbit');
  mkdirSync(home, { recursive: true });
  const user = runAs('rabbitmq');
  writeFileSync(join(home, 'rabbitmq.conf'), `listeners.tcp.local = 127.0.0.1:${port}\n`);
  writeFileSync(join(home, 'enabled_plugins'), '[].\n');
  writeFileSync(join(home, 'rabbitmq-env.conf'), 'ERL_EPMD_ADDRESS=127.0.0.1\n');
  if (user.uid !== undefined) for (const f of ['', 'rabbitmq.conf', 'enabled_plugins', 'rabbitmq-env.conf']) chownSync(join(home, f), user.uid, user.gid ?? user.uid);
  const node = `scfaults${randomBytes(3).toString('hex')}@localhost`;
  const url = `amqp://guest:guest@127.0.0.1:${port}`;
  let proc: Proc | undefined;
  async function isUp(): Promise<boolean> {
    return (await tcpOpen(port)) && amqpAnswers(url);
  }
  return {
    name: 'rabbitmq',
    url,
    get proc() {
      return proc;
    },
    async start() {
      const t0 = Date.now();
      proc = startProc('rabbitmq', RABBITMQ_SERVER, [], {
        ...user,
        cwd: home,
        env: {
          ...baseEnv(),
          HOME: home,
          RABBITMQ_NODENAME: node,
          RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
          RABBITMQ_NODE_PORT: String(port),
          RABBITMQ_DIST_PORT: String(distPort),
          RABBITMQ_CONFIG_FILE: join(home, 'rabbitmq.conf'),
          RABBITMQ_CONF_ENV_FILE: join(home, 'rabbitmq-env.conf'),
          RABBITMQ_ENABLED_PLUGINS_FILE: join(home, 'enabled_plugins'),
          RABBITMQ_MNESIA_BASE: join(home, 'mnesia'),
          RABBITMQ_LOG_BASE: join(home, 'log'),
          RABBITMQ_LOGS: '-',
          ERL_EPMD_ADDRESS: '127.0.0.1',
        },
        logFile: join(dir, 'rabbitmq.log'),
      });
      await waitUntil('rabbitmq up', isUp, 60_000, 200);
      return Date.now() - t0;
    },
    async stop(hard = false) {
      // SIGTERM to the start script: it stops the node properly (rabbitmqctl stop) and exits.
      if (proc) await stopProc(proc, hard ? 'SIGKILL' : 'SIGTERM', 20_000);
    },
    isUp,
  };
}

function postgresService(dir: string, port: number): Service & { init(): Promise<void> } {
  const data = join(dir, 'pg');
  mkdirSync(data, { recursive: true });
  const user = runAs('postgres');
  if (user.uid !== undefined) chownSync(data, user.uid, user.gid ?? user.uid);
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  let proc: Proc | undefined;
  async function isUp(): Promise<boolean> {
    const c = new Client({ connectionString: url, connectionTimeoutMillis: 1000 });
    c.on('error', () => undefined);
    try {
      await c.connect();
      await c.query('SELECT 1');
      return true;
    } catch {
      return false;
    } finally {
      await c.end().catch(() => undefined);
    }
  }
  return {
    name: 'postgres',
    url,
    get proc() {
      return proc;
    },
    async init() {
      const p = startProc('initdb', pgBin('initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync', '--locale=C'], {
        ...user,
        cwd: data,
        env: baseEnv(),
        logFile: join(dir, 'initdb.log'),
      });
      const code = await p.exited;
      if (code !== 0) throw new Error(`initdb failed (${code}):\n${p.tail(30)}`);
    },
    async start() {
      const t0 = Date.now();
      proc = startProc(
        'postgres',
        pgBin('postgres'),
        ['-D', data, '-p', String(port), '-k', data, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=200', '-c', 'shared_buffers=64MB'],
        { ...user, cwd: data, env: baseEnv(), logFile: join(dir, 'postgres.log') },
      );
      await waitUntil('postgres up', isUp, 30_000, 100);
      return Date.now() - t0;
    },
    async stop(hard = false) {
      // SIGINT: fast shutdown (sessions are cut, committed work is kept)
      if (proc) await stopProc(proc, hard ? 'SIGKILL' : 'SIGINT', 20_000);
    },
    isUp,
  };
}

export interface InfraOptions {
  /** also start a 3-master/3-replica Redis Cluster (test/clusters/redis-cluster.ts) for the services */
  redisCluster?: boolean;
}

export async function startInfra(options: InfraOptions = {}): Promise<Infra> {
  checkBinaries();
  const dir = tempDir('infra');
  const [redisPort, rabbitPort, distPort, pgPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const redis = redisService(dir, redisPort as number);
  const rabbit = rabbitService(dir, rabbitPort as number, distPort as number);
  const postgres = postgresService(dir, pgPort as number);
  const databaseUrl = (name: string) => `postgres://postgres@127.0.0.1:${pgPort}/${name}`;
  const templateDb = 'sc_faults_template';
  let redisCluster: RedisClusterHandle | undefined;
  try {
    await Promise.all([
      redis.start(),
      options.redisCluster ? startRedisCluster().then((c) => void (redisCluster = c)) : undefined,
      rabbit.start(),
      (async () => {
        await postgres.init();
        await postgres.start();
        await createDatabase(databaseUrl(templateDb));
        await migrate(databaseUrl(templateDb));
      })(),
    ]);
  } catch (err) {
    await Promise.all([redis.stop(true), rabbit.stop(true), postgres.stop(true), redisCluster?.close()]);
    removeDir(dir);
    throw err;
  }
  let closing: Promise<void> | undefined;
  return {
    redis,
    rabbit,
    postgres,
    templateDb,
    databaseUrl,
    dir,
    ...(redisCluster ? { redisCluster } : {}),
    async createScenarioDb(name) {
      const c = new Client({ connectionString: databaseUrl('postgres'), connectionTimeoutMillis: 5000 });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS "${name}"`);
        await c.query(`CREATE DATABASE "${name}" TEMPLATE "${templateDb}"`);
      } finally {
        await c.end();
      }
      return databaseUrl(name);
    },
    close() {
      closing ??= (async () => {
        await Promise.all([redis.stop(true), rabbit.stop(true), postgres.stop(true), redisCluster?.close()]);
        if (!process.env.KEEP_FAULTS_DIR) removeDir(dir);
      })();
      return closing;
    },
  };
}
