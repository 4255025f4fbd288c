/** Database housekeeping used by `npm run db:create`, `npm start` and the test setup. */
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { Client } from 'pg';
import { ROOT } from './env';

function maintenanceUrl(databaseUrl: string): { admin: string; name: string } {
  const u = new URL(databaseUrl);
  const name = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (!/^[A-Za-z0-9_]{1,63}$/.test(name)) throw new Error(`database name '${name}' must be 1-63 characters of A-Z a-z 0-9 _`);
  u.pathname = '/postgres';
  return { admin: u.toString(), name };
}

/** Creates the database of DATABASE_URL when it does not exist; returns whether it did. */
export async function createDatabase(databaseUrl: string): Promise<boolean> {
  const { admin, name } = maintenanceUrl(databaseUrl);
  const client = new Client({ connectionString: admin, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (rowCount) return false;
    await client.query(`CREATE DATABASE "${name}"`);
    return true;
  } finally {
    await client.end();
  }
}

export async function dropDatabase(databaseUrl: string): Promise<void> {
  const { admin, name } = maintenanceUrl(databaseUrl);
  const client = new Client({ connectionString: admin, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

/** Runs sequelize-cli's db:migrate against a database URL (up to and including migration `to`, when given); resolves with its output. */
export function migrate(databaseUrl: string, command: 'db:migrate' | 'db:migrate:undo:all' = 'db:migrate', to?: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const bin = resolve(ROOT, 'node_modules/.bin/sequelize-cli');
    const child = spawn(bin, [command, '--url', databaseUrl, ...(to === undefined ? [] : ['--to', to])], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolvePromise(out) : reject(new Error(`sequelize-cli ${command} failed (exit ${code}):\n${out.trim()}`))));
  });
}
