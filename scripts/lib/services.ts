/**
 * Makes sure Redis, RabbitMQ and Postgres answer at their configured URLs:
 * when nothing listens at a URL that names this machine and the service's
 * default port, and its server is installed, start it; otherwise say in one
 * line what to install or fix. Any other address is never started: a local
 * server there would be a second instance nobody stops.
 */
import { execSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { createClient } from 'redis';
import amqp from 'amqplib';
import { Client } from 'pg';
import { errorMessage } from '../../shared/src/errors';
import { urlProblem, type URL_FORMS } from './env';

export interface ServiceUrls {
  redisUrl: string;
  amqpUrl: string;
  databaseUrl: string;
}

/** The variable each URL came from, named in every problem. */
export type ServiceVariables = Record<keyof ServiceUrls, string>;

const VARIABLES: ServiceVariables = { redisUrl: 'REDIS_URL', amqpUrl: 'AMQP_URL', databaseUrl: 'DATABASE_URL' };

interface ServiceSpec {
  name: string;
  url: string;
  variable: string;
  kind: keyof typeof URL_FORMS;
  /** the port the installed local server listens on, the only one it is ever started for */
  defaultPort: number;
  binary: string;
  aptPackage: string;
  start: () => void;
  probe: () => Promise<void>;
}

const isLocal = (hostname: string) => ['127.0.0.1', 'localhost', '::1', '[::1]'].includes(hostname);
const hasBinary = (bin: string) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
const redact = (url: string) => url.replace(/\/\/[^@/]*@/, '//***@');

function address(url: string, defaultPort: number): { hostname: string; port: number } {
  const u = new URL(url);
  return { hostname: u.hostname, port: Number(u.port || defaultPort) };
}

function portOpen(url: string, defaultPort: number): Promise<boolean> {
  const { hostname, port } = address(url, defaultPort);
  return new Promise((resolve) => {
    const s = tcpConnect({ host: hostname.replace(/^\[|\]$/g, ''), port });
    s.setTimeout(1000);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
    s.once('timeout', () => (s.destroy(), resolve(false)));
  });
}

function specs(urls: ServiceUrls, variables: ServiceVariables): ServiceSpec[] {
  return [
    {
      name: 'Redis',
      url: urls.redisUrl,
      variable: variables.redisUrl,
      kind: 'redis',
      defaultPort: 6379,
      binary: 'redis-server',
      aptPackage: 'redis-server',
      start: () => {
        execSync('mkdir -p /var/lib/redis /var/log/redis 2>/dev/null; redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/simplechat.log', { stdio: 'ignore' });
      },
      probe: async () => {
        const c = createClient({ url: urls.redisUrl, socket: { connectTimeout: 2000, reconnectStrategy: false } });
        c.on('error', () => undefined);
        await c.connect();
        await c.ping();
        await c.close();
      },
    },
    {
      name: 'RabbitMQ',
      url: urls.amqpUrl,
      variable: variables.amqpUrl,
      kind: 'amqp',
      defaultPort: 5672,
      binary: 'rabbitmq-server',
      aptPackage: 'rabbitmq-server',
      start: () => execSync('rabbitmq-server -detached', { stdio: 'ignore' }),
      probe: async () => {
        if (!(await portOpen(urls.amqpUrl, 5672))) throw new Error('port closed');
        const c = await amqp.connect(urls.amqpUrl, { timeout: 3000 });
        c.on('error', () => undefined);
        await c.close();
      },
    },
    {
      name: 'PostgreSQL',
      url: urls.databaseUrl,
      variable: variables.databaseUrl,
      kind: 'postgres',
      defaultPort: 5432,
      binary: 'pg_ctlcluster',
      aptPackage: 'postgresql',
      start: () => {
        const versions = existsSync('/etc/postgresql') ? readdirSync('/etc/postgresql') : [];
        const version = versions.sort().at(-1);
        if (!version) throw new Error('no cluster in /etc/postgresql');
        execSync(`pg_ctlcluster --skip-systemctl-redirect ${version} main start`, { stdio: 'ignore' });
      },
      probe: async () => {
        const u = new URL(urls.databaseUrl);
        u.pathname = '/postgres';
        const c = new Client({ connectionString: u.toString(), connectionTimeoutMillis: 2000 });
        c.on('error', () => undefined);
        await c.connect();
        await c.end();
      },
    },
  ];
}

async function waitUntil(probe: () => Promise<void>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      await probe();
      return true;
    } catch {
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  return false;
}

/** Problems with the form of the URLs, one line each (empty when all three parse). */
export function serviceUrlProblems(urls: ServiceUrls, variables: ServiceVariables = VARIABLES): string[] {
  return specs(urls, variables).flatMap((s) => urlProblem(s.variable, s.url, s.kind) ?? []);
}

/** Returns problems, one line each (empty when everything answers). */
export async function ensureServices(urls: ServiceUrls, say: (line: string) => void, variables: ServiceVariables = VARIABLES): Promise<string[]> {
  const invalid = serviceUrlProblems(urls, variables);
  if (invalid.length) return invalid;
  const problems: string[] = [];
  await Promise.all(
    specs(urls, variables).map(async (s) => {
      try {
        await s.probe();
        say(`${s.name.padEnd(10)} up at ${redact(s.url)}`);
        return;
      } catch (err) {
        const { hostname, port } = address(s.url, s.defaultPort);
        if (await portOpen(s.url, s.defaultPort)) {
          problems.push(`${s.name} at ${hostname}:${port} answers but rejects ${s.variable} (${errorMessage(err)}); fix ${s.variable} in .env`);
          return;
        }
        if (!isLocal(hostname) || port !== s.defaultPort) {
          problems.push(`cannot reach ${s.name} at ${hostname}:${port} (${s.variable}); start it or fix ${s.variable} in .env`);
          return;
        }
        if (!hasBinary(s.binary)) {
          problems.push(`${s.name} is not running at ${hostname}:${port} and is not installed: install it (Debian/Ubuntu: apt-get install -y ${s.aptPackage}) or point ${s.variable} in .env at a running one`);
          return;
        }
      }
      say(`${s.name.padEnd(10)} not answering at ${redact(s.url)}; starting the local ${s.binary}`);
      try {
        s.start();
      } catch (err) {
        problems.push(`${s.name} could not be started (${errorMessage(err)}); start it yourself and retry`);
        return;
      }
      if (await waitUntil(s.probe, 60_000)) say(`${s.name.padEnd(10)} started, up at ${redact(s.url)}`);
      else problems.push(`${s.name} was started but does not answer at ${redact(s.url)} after 60 s; check its log`);
    }),
  );
  return problems;
}
