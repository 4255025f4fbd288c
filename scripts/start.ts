/**
 * npm start: the whole cluster in one terminal. Checks (and where possible
 * starts) Redis, RabbitMQ and Postgres, creates and migrates the database,
 * starts SvDiscover, SvPersist and N SvWebsocket instances with prefixed logs,
 * prints where everything is, restarts a process that exits on its own (see
 * lib/supervisor.ts), and stops it all cleanly on Ctrl-C.
 *
 *   npm start [-- --ws 4]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';
import { request } from 'undici';
import { ensureServices, serviceUrlProblems } from './lib/services';
import { createDatabase, migrate } from './lib/db';
import { writeSequelizeCliConfig } from './genConfig';
import { ROOT, scriptEnv, die, portProblem, envFilePath } from './lib/env';
import { errorMessage } from '../shared/src/errors';
import { readEnvFile } from '../shared/src/config';
import { SERVICES } from './config-docs';
import { createSupervisor } from './lib/supervisor';

const COLORS = [36, 35, 33, 32, 34, 91, 92, 93, 94, 95, 96];
const LEVEL_NAMES: Record<string, string> = { trace: 'TRACE', debug: 'DEBUG', info: 'INFO ', warn: 'WARN ', error: 'ERROR', fatal: 'FATAL' };
const useColor = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code: number, s: string) => (useColor ? `\x1b[${code}m${s}\x1b[0m` : s);

function say(line: string): void {
  process.stdout.write(`${paint(1, '[simplechat]')} ${line}\n`);
}

/** pino JSON line -> "12:00:01 INFO  [ws-1] message key=value" */
function formatLine(name: string, color: number, line: string): string {
  const prefix = paint(color, `[${name}]`.padEnd(12));
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return `${prefix} ${line}`;
  }
  const { level, time, msg, service: _s, pid: _p, hostname: _h, ...rest } = rec;
  const t = typeof time === 'string' ? time.slice(11, 19) : '';
  const lvl = LEVEL_NAMES[String(level)] ?? String(level);
  const lvlPainted = level === 'error' || level === 'fatal' ? paint(31, lvl) : level === 'warn' ? paint(33, lvl) : lvl;
  const extra = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${prefix} ${t} ${lvlPainted} ${String(msg ?? '')}${extra ? ` ${paint(2, extra)}` : ''}`;
}

const DEGRADED_GRACE_MS = 10_000;

/** What a service's /health said last: answering (200), and which dependencies it cannot reach. */
interface Health {
  answering: boolean;
  down: string[];
}

/**
 * Waits until a service answers /health with status ok (every dependency up). A gateway answers
 * 200 while SvDiscover or SvPersist are still starting (degraded), so 200 is not enough to say
 * the cluster is up; once it answers, it has DEGRADED_GRACE_MS more to reach them.
 */
async function waitHealthy(url: string, timeoutMs: number): Promise<Health> {
  let deadline = Date.now() + timeoutMs;
  let last: Health = { answering: false, down: [] };
  while (Date.now() < deadline) {
    try {
      const res = await request(url, { headersTimeout: 1000, bodyTimeout: 1000 });
      const body = (await res.body.json().catch(() => ({}))) as { status?: string; dependencies?: Record<string, string> };
      last = { answering: res.statusCode === 200, down: Object.entries(body.dependencies ?? {}).filter(([, v]) => v !== 'up').map(([k]) => k) };
      if (res.statusCode === 200 && body.status === 'ok') return last;
      if (last.answering) deadline = Math.min(deadline, Date.now() + DEGRADED_GRACE_MS);
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return last;
}

/** how long the cluster-is-up line waits for the supervisor to count the processes up */
const UP_AGREEMENT_MS = 2000;

/** Resolves true once `child` answers at its /health with 200, false when it exited first. */
async function waitAnswering(url: string, child: ChildProcess): Promise<boolean> {
  while (child.exitCode === null && child.signalCode === null) {
    try {
      const res = await request(url, { headersTimeout: 1000, bodyTimeout: 1000 });
      await res.body.dump();
      if (res.statusCode === 200) return true;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return false;
}

function describeHealth(h: Health | undefined): string {
  if (h?.answering && h.down.length === 0) return 'healthy';
  const unreached = h?.down.length ? `cannot reach ${h.down.join(', ')} yet` : '';
  if (h?.answering) return `up, ${unreached} (see its log lines)`;
  return `NOT healthy${unreached ? `: ${unreached}` : ' yet'} (see its log lines)`;
}

/** Whether something listens where a service would bind; other bind errors are left for the service to report. */
function isPortBusy(port: number, host: string): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolvePromise(err.code === 'EADDRINUSE'));
    server.listen(port, host, () => server.close(() => resolvePromise(false)));
  });
}

/** Variables the settings file sets that no service's config knows: likely misspelled, and otherwise silently ignored. */
function unknownVariables(): string[] {
  const known = new Set(SERVICES.flatMap((s) => Object.values(s.spec).map((o) => o.env)));
  return Object.keys(readEnvFile(envFilePath())).filter((k) => !known.has(k));
}

async function main(): Promise<void> {
  let values: { ws: string; help?: boolean };
  try {
    ({ values } = parseArgs({ options: { ws: { type: 'string', default: '2' }, help: { type: 'boolean' } } }));
  } catch (err) {
    die(`start: ${errorMessage(err).split('\n')[0]}; npm start takes only --ws N (after --: npm start -- --ws 4) and --help`);
  }
  if (values.help) {
    process.stdout.write('npm start [-- --ws N]\n  Runs SvDiscover, SvPersist and N SvWebsocket instances (ports 3002..) against the services in .env.\n');
    return;
  }
  const env = scriptEnv();
  const urls = {
    redisUrl: env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    amqpUrl: env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
    databaseUrl: env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/simplechat',
  };
  const ports = { DISCOVER_PORT: env.DISCOVER_PORT ?? '3001', PERSIST_PORT: env.PERSIST_PORT ?? '3000', WS_PORT: env.WS_PORT ?? '3002' };
  // Everything wrong with the settings at once, before anything is checked or started.
  const invalid = [
    ...(/^\d+$/.test(values.ws) && Number(values.ws) >= 1 && Number(values.ws) <= 32 ? [] : [`--ws = "${values.ws}" must be a whole number from 1 to 32`]),
    ...Object.entries(ports).flatMap(([variable, value]) => portProblem(variable, value) ?? []),
    ...serviceUrlProblems(urls),
  ];
  if (invalid.length) die(invalid.map((p) => `start: ${p}`).join('\n'));
  const { databaseUrl } = urls;
  const wsCount = Number(values.ws);
  const wsBase = Number(ports.WS_PORT);
  if (wsBase + wsCount - 1 > 65535) die(`start: ${wsCount} gateways from WS_PORT = ${wsBase} need ports up to ${wsBase + wsCount - 1}; lower WS_PORT in .env`);

  // Hosts as the services default them (their config.ts), so a busy port is found where they would bind.
  const plan = [
    { name: 'discover', script: 'SvDiscover/dist/main.js', args: [] as string[], port: Number(ports.DISCOVER_PORT), variable: 'DISCOVER_PORT', host: env.DISCOVER_HOST ?? '127.0.0.1' },
    { name: 'persist', script: 'SvPersist/dist/main.js', args: [] as string[], port: Number(ports.PERSIST_PORT), variable: 'PERSIST_PORT', host: env.PERSIST_HOST ?? '127.0.0.1' },
    ...Array.from({ length: wsCount }, (_, i) => ({
      name: `ws-${i + 1}`,
      script: 'SvWebsocket/dist/main.js',
      args: ['--port', String(wsBase + i), '--instance-id', `ws-${i + 1}`],
      port: wsBase + i,
      variable: i ? `WS_PORT+${i}` : 'WS_PORT',
      host: env.WS_HOST ?? '0.0.0.0',
    })),
  ];
  for (const [i, p] of plan.entries()) {
    const other = plan.slice(0, i).find((q) => q.port === p.port);
    if (other) die(`start: ${other.variable} and ${p.variable} are both port ${p.port}; give each service its own port in .env${wsCount > 1 ? ` (the gateways use WS_PORT to WS_PORT+${wsCount - 1})` : ''}`);
  }
  const busy = (await Promise.all(plan.map(async (p) => ((await isPortBusy(p.port, p.host)) ? p : undefined)))).filter((p) => p !== undefined);
  if (busy.length) {
    const one = busy.length === 1;
    const variables = [...new Set(busy.map((p) => p.variable.replace(/\+\d+$/, '')))];
    die(`start: ${one ? 'port' : 'ports'} ${busy.map((p) => `${p.port} (${p.variable})`).join(', ')} ${one ? 'is' : 'are'} already in use; stop what uses ${one ? 'it' : 'them'} or change ${variables.join(', ')} in .env`);
  }

  const unknown = unknownVariables();
  if (unknown.length) say(`${process.env.ENV_FILE ?? '.env'} sets variables no service reads (misspelled?): ${unknown.join(', ')}`);

  say('checking Redis, RabbitMQ and PostgreSQL');
  const problems = await ensureServices(urls, (l) => say(`  ${l}`));
  if (problems.length) die(problems.map((p) => `start: ${p}`).join('\n'));

  try {
    if (await createDatabase(databaseUrl)) say(`created database ${new URL(databaseUrl).pathname.slice(1)}`);
    writeSequelizeCliConfig(databaseUrl);
    const out = await migrate(databaseUrl);
    const applied = out.split('\n').filter((l) => l.includes('migrated')).length;
    say(applied ? `applied ${applied} migration(s)` : 'database schema is up to date');
  } catch (err) {
    die(`start: database setup failed (DATABASE_URL): ${errorMessage(err)}`);
  }

  // The gateways reach the SvDiscover and SvPersist started here, wherever DISCOVER_URL and
  // PERSIST_URL point (they are for running the services apart): changing a port is enough.
  const reachAt = (p: (typeof plan)[number]) => {
    const host = ['0.0.0.0', '::'].includes(p.host) ? '127.0.0.1' : p.host;
    return `http://${host.includes(':') ? `[${host}]` : host}:${p.port}`;
  };
  const internalUrls: Record<string, string> = { DISCOVER_URL: reachAt(plan[0] as (typeof plan)[number]), PERSIST_URL: reachAt(plan[1] as (typeof plan)[number]) };
  for (const [variable, url] of Object.entries(internalUrls)) {
    if (env[variable] && env[variable]?.replace(/\/$/, '') !== url) say(`${variable} is ${env[variable]}; the gateways use the ${variable === 'DISCOVER_URL' ? 'SvDiscover' : 'SvPersist'} started here, ${url}`);
  }
  const childEnv = { ...process.env, FORCE_COLOR: '0', ...internalUrls };
  const healthUrl = (p: (typeof plan)[number]) => `http://127.0.0.1:${p.port}/health`;

  const supervisor = createSupervisor({ say });
  const procs = plan.map((p, i) => {
    const color = COLORS[i % COLORS.length] as number;
    return supervisor.run({
      name: p.name,
      spawn: () => {
        // Own process group: Ctrl-C reaches only this script, which stops the services in order.
        const child = spawn(process.execPath, [resolve(ROOT, p.script), ...p.args], { cwd: ROOT, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
        for (const stream of [child.stdout, child.stderr]) {
          createInterface({ input: stream }).on('line', (line) => process.stdout.write(`${formatLine(p.name, color, line)}\n`));
        }
        return child;
      },
      waitUp: (child) => waitAnswering(healthUrl(p), child),
    });
  });

  let stopping = false;
  const stopAll = async () => {
    if (stopping) return;
    stopping = true;
    say('stopping the cluster (SIGTERM, 15 s deadline)');
    // Gateways first: they close clients with 1001, flush confirms and drop their claims
    // while SvDiscover and the broker consumer are still there; then the rest.
    await supervisor.stop([procs.filter((p) => p.name.startsWith('ws-')), procs.filter((p) => !p.name.startsWith('ws-'))], 15_000);
    say('stopped');
    process.exit(0);
  };
  process.on('SIGINT', () => void stopAll());
  process.on('SIGTERM', () => void stopAll());
  process.on('exit', () => supervisor.killAll());

  const results = await Promise.all(plan.map((p) => waitHealthy(healthUrl(p), 60_000)));
  // What is listed as up is up for the supervisor too (a crash right after is "exited", not
  // "exited before it was up"); its check of the same /health follows within a poll.
  await Promise.race([Promise.all(procs.map((p) => p.up)), new Promise((r) => setTimeout(r, UP_AGREEMENT_MS).unref())]);
  if (stopping) return;
  const rows = plan.map((p, i) => `  ${p.name.padEnd(9)} pid ${String(procs[i]?.child.pid).padEnd(7)} http://localhost:${p.port}  ${describeHealth(results[i])}`);
  say(`cluster is up:\n${rows.join('\n')}`);
  say(`open the chat client: ${plan.filter((p) => p.name.startsWith('ws-')).map((p) => paint(4, `http://localhost:${p.port}/client`)).join('  ')}`);
  say('press Ctrl-C to stop everything');
}

main().catch((err: unknown) => die(`start: ${errorMessage(err)}`));
