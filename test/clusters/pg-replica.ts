/**
 * A private Postgres primary and a streaming replica of it (pg_basebackup -R), on fixed
 * loopback ports, in a temporary directory owned by the postgres user (Postgres refuses
 * root). Both are torn down by close(), and by the fault suite's exit handlers should the
 * test process die first.
 */
import { spawnSync } from 'node:child_process';
import { chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { createDatabase, migrate } from '../../scripts/lib/db';
import { startProc, stopProc, tempDir, removeDir, waitUntil, type Proc } from '../faults/procs';
import { pgBin, runAs } from '../faults/infra';

export interface PgServer {
  readonly port: number;
  readonly dir: string;
  readonly proc: Proc | undefined;
  url(database: string): string;
  start(): Promise<number>;
  /** SIGKILL (hard) or `pg_ctl stop -m immediate` */
  stop(how: 'kill' | 'immediate'): Promise<void>;
  isUp(): Promise<boolean>;
  query<T>(database: string, sql: string, params?: unknown[]): Promise<T[]>;
}

export interface PgReplicaPair {
  primary: PgServer;
  replica: PgServer;
  /** a migrated database on the primary, once the replica shows it */
  createDatabase(name: string): Promise<void>;
  /** how far the replica's replay is behind the primary's WAL, in bytes */
  lagBytes(database: string): Promise<number>;
  close(): Promise<void>;
}

/** Runs a Postgres tool as the postgres user (runuser as root); throws its output on failure. */
function runPg(tool: string, args: string[]): void {
  const asRoot = process.getuid?.() === 0;
  const r = asRoot ? spawnSync('runuser', ['-u', 'postgres', '--', pgBin(tool), ...args], { encoding: 'utf8', timeout: 60_000 }) : spawnSync(pgBin(tool), args, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`${tool} failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout || '').trim().split('\n').slice(-5).join(' | ')}`);
}

function server(root: string, name: string, port: number): PgServer {
  const dir = join(root, name);
  const user = runAs('postgres');
  let proc: Proc | undefined;
  const url = (database: string) => `postgres://postgres@127.0.0.1:${port}/${database}`;
  async function query<T>(database: string, sql: string, params: unknown[] = []): Promise<T[]> {
    const c = new Client({ connectionString: url(database), connectionTimeoutMillis: 2000 });
    c.on('error', () => undefined);
    await c.connect();
    try {
      return (await c.query(sql, params)).rows as T[];
    } finally {
      await c.end().catch(() => undefined);
    }
  }
  const self: PgServer = {
    port,
    dir,
    get proc() {
      return proc;
    },
    url,
    async start() {
      const t0 = Date.now();
      proc = startProc(`postgres-${name}`, pgBin('postgres'), ['-D', dir, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=100', '-c', 'shared_buffers=32MB', '-c', 'wal_level=replica', '-c', 'max_wal_senders=4', '-c', 'hot_standby=on'], {
        ...user,
        cwd: dir,
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' },
        logFile: join(root, `${name}.log`),
      });
      await waitUntil(`postgres ${name} up`, () => self.isUp(), 30_000, 50);
      return Date.now() - t0;
    },
    async stop(how) {
      if (!proc?.isRunning()) return;
      if (how === 'immediate') runPg('pg_ctl', ['stop', '-D', dir, '-m', 'immediate', '-w']);
      await stopProc(proc, 'SIGKILL', 5000);
    },
    async isUp() {
      try {
        await query('postgres', 'SELECT 1');
        return true;
      } catch {
        return false;
      }
    },
    query,
  };
  return self;
}

/** Starts a primary on `ports[0]` and its streaming replica on `ports[1]`. */
export async function startPgReplica(ports: readonly [number, number]): Promise<PgReplicaPair> {
  const root = tempDir('pg-replica');
  const user = runAs('postgres');
  if (user.uid !== undefined) chownSync(root, user.uid, user.gid ?? user.uid);
  const primary = server(root, 'primary', ports[0]);
  const replica = server(root, 'replica', ports[1]);
  const pair: PgReplicaPair = {
    primary,
    replica,
    async createDatabase(name) {
      await createDatabase(primary.url(name));
      await migrate(primary.url(name));
      await waitUntil(`database ${name} on the replica`, async () => (await replica.query<{ ok: boolean }>('postgres', 'SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS ok', [name]))[0]?.ok === true, 20_000, 50);
    },
    async lagBytes(database) {
      const [p] = await primary.query<{ lsn: string }>(database, 'SELECT pg_current_wal_lsn()::text AS lsn');
      const [r] = await replica.query<{ lag: string }>(database, 'SELECT pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn())::text AS lag', [p?.lsn]);
      return Number(r?.lag ?? 0);
    },
    async close() {
      await Promise.all([replica.stop('kill').catch(() => undefined), primary.stop('kill').catch(() => undefined)]);
      if (!process.env.KEEP_FAULTS_DIR) removeDir(root);
    },
  };
  try {
    mkdirSync(primary.dir);
    if (user.uid !== undefined) chownSync(primary.dir, user.uid, user.gid ?? user.uid);
    // initdb -A trust writes pg_hba lines that let local connections replicate too
    runPg('initdb', ['-D', primary.dir, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync', '--locale=C']);
    await primary.start();
    runPg('pg_basebackup', ['-h', '127.0.0.1', '-p', String(ports[0]), '-U', 'postgres', '-D', replica.dir, '-R', '-X', 'stream', '--no-sync']);
    await replica.start();
    await waitUntil('replica streaming', async () => (await primary.query<{ n: number }>('postgres', "SELECT count(*)::int AS n FROM pg_stat_replication WHERE state = 'streaming'"))[0]?.n === 1, 20_000, 50);
  } catch (err) {
    await pair.close();
    throw err;
  }
  return pair;
}
