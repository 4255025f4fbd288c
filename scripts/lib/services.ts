/**
 * Makes sure Redis, RabbitMQ and Postgres answer at their configured URLs:
 * when one does not, and it is local and its server is installed, start it;
 * otherwise say in one line what to install or fix.
 */
import { execSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { createClient } from 'redis';
import amqp from 'amqplib';
import { Client } from 'pg';
import { errorMessage } from '../../shared/src/errors';

export interface ServiceUrls {
  redisUrl: string;
  amqpUrl: string;
  databaseUrl: string;
}

interface ServiceSpec {
  name: string;
  url: string;
  binary: string;
  aptPackage: string;
  start: () => void;
  probe: () => Promise<void>;
}

const isLocal = (url: string) => ['127.0.0.1', 'localhost', '::1', '[::1]'].includes(new URL(url).hostname);
const hasBinary = (bin: string) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
const redact = (url: string) => url.replace(/\/\/[^@/]*@/, '//***@');

function portOpen(url: string, defaultPort: number): Promise<boolean> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const s = tcpConnect({ host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || defaultPort) });
    s.setTimeout(1000);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
    s.once('timeout', () => (s.destroy(), resolve(false)));
  });
}

function specs(urls: ServiceUrls): ServiceSpec[] {
  return [
    {
      name: 'Redis',
      url: urls.redisUrl,
      binary: 'redis-server',
      aptPackage: 'redis-server',
      start: () => {
        const port = new URL(urls.redisUrl).port || '6379';
        execSync(`mkdir -p /var/lib/redis /var/log/redis 2>/dev/null; redis-server --daemonize yes --bind 127.0.0.1 -::1 --port ${port} --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/simplechat.log`, { stdio: 'ignore' });
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

/** Returns problems, one line each (empty when everything answers). */
export async function ensureServices(urls: ServiceUrls, say: (line: string) => void): Promise<string[]> {
  const problems: string[] = [];
  await Promise.all(
    specs(urls).map(async (s) => {
      try {
        await s.probe();
        say(`${s.name.padEnd(10)} up at ${redact(s.url)}`);
        return;
      } catch (err) {
        if (!isLocal(s.url)) {
          problems.push(`${s.name} does not answer at ${redact(s.url)} (${errorMessage(err)}); start it or fix the URL in .env`);
          return;
        }
        if (!hasBinary(s.binary)) {
          problems.push(`${s.name} is not running at ${redact(s.url)} and is not installed: install it (Debian/Ubuntu: apt-get install -y ${s.aptPackage}) or point the URL in .env at a running one`);
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
