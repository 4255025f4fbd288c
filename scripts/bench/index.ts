/**
 * npm run bench [-- --quick] [-- options]
 *
 * One run, one table: the raw limits of the building blocks (bare ws relay,
 * undici POSTs, RabbitMQ confirm-publish and consume+ack, Postgres multi-row
 * INSERT and COPY), then SimpleChat on a private cluster (its own database,
 * key and queue prefixes, free loopback ports) at stepped rates, cross- and
 * same-instance; the highest rates held with 0 lost, the writer's drain rate
 * of a backlog, the memory of idle authenticated connections, and rooms of
 * 100 and 1,000 members against Socket.IO with its Redis adapter (rooms.ts),
 * presence fan-out after a gateway is killed or drained (presence.ts) and the
 * CPU receipts cost per message (receipts.ts). Ratios
 * against the raw limits come from the same run on the same machine.
 * Progress goes to stderr, the table to stdout, everything to
 * bench-results/<timestamp>.json. Every wait is bounded; the whole run has a
 * deadline and cleans up after itself.
 */
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem, release } from 'node:os';
import { resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import amqp, { type Channel, type ChannelModel } from 'amqplib';
import { request } from 'undici';
import { ensureServices } from '../lib/services';
import { ROOT, scriptEnv } from '../lib/env';
import { createDatabase, dropDatabase, migrate } from '../lib/db';
import { topology } from '../../shared/src/amqp';
import { baseEnv, spawnNode, TS_NODE_FLAGS, type Child } from './children';
import { startCluster, waitHealthy, type Cluster } from './cluster';
import { writerDrain, type DrainResult } from './drain';
import { Histogram, quantile } from './histogram';
import type { ConnectResult, RunArgs, RunResult } from './load-worker';
import type { ReceiptKind } from '../../shared/src/wire';
import { deltaAll, scrapeServices, total, type Counters } from './metrics';
import { formatProfile, summariseProfile, type ProfileSummary } from './profile';
import { measure, openFileLimits, pidListeningOn, rssBytes, withDescendants, type ProcUsage, type Tracked } from './procs';
import { confirmPublishLoop, consumeAckLoop, copyLoop, multiRowInsertLoop, undiciPostLoop, type Rate } from './raw';
import { runPartitionDrains, runQueueTypes, type PartitionContext } from './partitions';
import { runPresence } from './presence';
import { runReceipts } from './receipts';
import { runRooms } from './rooms';
import { createRpcClient, type RpcClient } from './rpc';
import { HELP, parseOptions, type Options } from './options';
import { errorCount, num, outcomeNotes, outcomeRow, renderTable, type TableRow } from './table';

/** The options of this run; --help and refused options end the process here. */
function options(): Options {
  const parsed = parseOptions(process.argv.slice(2));
  if (parsed.kind === 'help') {
    process.stdout.write(HELP);
    process.exit(0);
  }
  if (parsed.kind === 'problems') {
    process.stderr.write(`bench: ${parsed.problems.join('\n       ')}\n\n${HELP}`);
    process.exit(2);
  }
  return parsed.options;
}

const say = (line: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (a: number | undefined, b: number | undefined) => (a !== undefined && b ? Math.round((100 * a) / b) : undefined);

interface Worker {
  child: Child;
  rpc: RpcClient;
}

interface StepRow {
  kind: 'step' | 'hold' | 'warmup';
  /** absent: SimpleChat */
  engine?: 'socketio';
  mode: 'cross' | 'same';
  offered: number;
  seconds: number;
  planned: number;
  sent: number;
  sentPerSec: number;
  acked: number;
  ackedPerSec: number;
  delivered: number;
  deliveredPerSec: number;
  lost: number;
  duplicated: number;
  noAnswer: number;
  errors: Record<string, number>;
  errorSamples: Record<string, string>;
  closed: Record<string, number>;
  hints: number;
  late: number;
  ackP50?: number;
  ackP99?: number;
  deliveryP50?: number;
  deliveryP99?: number;
  deliveryMax?: number;
  /** delivery p99 of the messages sent after the first second (SETTLE_MS) */
  deliverySettledP99?: number;
  queueAtEnd?: number;
  loadLoopDelayP99Ms: number;
  /** deliveries slower than 50 ms by second of the step (SLOW_DELIVERY_MS in load-worker.ts) */
  slowBySecond: number[];
  usage: Record<string, ProcUsage>;
  usageWhole: Record<string, ProcUsage>;
  /** deltas of the services' own counters over the step (GET /metrics) */
  counters: Record<string, Counters>;
  warnings: Record<string, number>;
  crashed: string[];
  /** receipts each receiving connection sent per message (receipts.ts); absent: none */
  receipts?: ReceiptKind[];
  receiptsSent: number;
  receiptPushes: number;
  receiptErrors: Record<string, number>;
  receiptErrorSamples: Record<string, string>;
  outOfOrder: number;
}

async function main(): Promise<void> {
  const o = options();
  const runId = `${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
  const startedAt = new Date();
  const env = scriptEnv();
  const redisUrl = env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  const amqpUrl = env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
  const databaseUrl = env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/simplechat';
  const resultsDir = resolve(ROOT, 'bench-results');
  mkdirSync(resultsDir, { recursive: true });
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  const profDir = resolve(resultsDir, `prof-${stamp}`);

  const rows: TableRow[] = [];
  const results: Record<string, unknown> = {};
  const children: Child[] = [];
  const workers: Worker[] = [];
  let cluster: Cluster | undefined;
  let rawDbUrl: string | undefined;
  let mq: { conn: ChannelModel; ch?: Channel } | undefined;
  let finishing: Promise<void> | undefined;
  /** best-effort removal of what a part created, in case it failed half-way */
  const cleanups: (() => Promise<unknown>)[] = [];
  /** every process the run started, services included (for naming profiles) */
  const allChildren = () => [...children, ...retired, ...(cluster?.children() ?? [])];
  /** processes of clusters the run is done with (the partitions part's), for their last log lines */
  const retired: Child[] = [];

  const limits = openFileLimits();
  const perWorkerConns = Math.ceil(Math.max(o.users, o.connections, 2 * o.presenceUsers) / o.workers);
  if (limits.hard < perWorkerConns + 200) {
    const fit = Math.max(10, (limits.hard - 500) * o.workers);
    say(`the open-file limit (${limits.hard}) is below what ${o.connections} connections need; measuring ${fit} instead`);
    o.connections = Math.min(o.connections, fit);
  }

  const title = () =>
    `SimpleChat benchmark ${startedAt.toISOString().slice(0, 16).replace('T', ' ')}Z${o.quick ? ' (quick)' : ''}: ${cpus().length} × ${cpus()[0]?.model.trim() ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}, Linux ${release()}; ${o.users} users over ${o.instances} SvWebsocket instances, ${o.body}-char bodies, ${o.workers} load process(es)${Object.keys(o.env).length ? `; settings ${Object.entries(o.env).map(([k, v]) => `${k}=${v}`).join(' ')}` : ''}${o.wsNodeFlags.length ? `; gateways run with ${o.wsNodeFlags.join(' ')}` : ''}; everything on one host`;

  async function finish(code: number, reason?: string): Promise<void> {
    finishing ??= (async () => {
      if (reason) say(reason);
      for (const w of workers) w.child.proc.disconnect?.();
      await Promise.all(children.map((c) => c.stop(10_000)));
      if (mq) await mq.conn.close().catch(() => undefined);
      if (cluster) await cluster.close().catch((e: unknown) => say(`cluster cleanup: ${String(e)}`));
      if (rawDbUrl) await dropDatabase(rawDbUrl).catch(() => undefined);
      for (const c of cleanups) await c().catch(() => undefined);
      const others = rows.map((r) => r.cpu?.other?.cpu).filter((v): v is number => v !== undefined);
      const avgOther = others.length ? others.reduce((a, b) => a + b, 0) / others.length : 0;
      const busy = `other processes on the host used ${Math.round(avgOther)}% of a core on average during the measurements${avgOther > 20 ? ' (BUSY HOST: figures are low and noisy)' : ''}`;
      const table = renderTable(`${title()}; ${busy}`, rows);
      let profiles: (ProfileSummary & { process: string })[] = [];
      if (o.cpuProf) {
        try {
          const names = new Map(allChildren().map((c) => [String(c.pid), c.name]));
          profiles = readdirSync(profDir)
            .filter((f) => f.endsWith('.cpuprofile'))
            .map((f) => ({ process: names.get(f.split('.')[3] ?? '') ?? '?', ...summariseProfile(resolve(profDir, f), 20) }));
        } catch {
          // no profiles written (a process was killed)
        }
      }
      const file = resolve(resultsDir, `${stamp}.json`);
      writeFileSync(
        file,
        `${JSON.stringify(
          {
            startedAt: startedAt.toISOString(),
            finishedAt: new Date().toISOString(),
            ...(reason ? { incomplete: reason } : {}),
            machine: { cpus: cpus().length, model: cpus()[0]?.model, memGiB: Math.round(totalmem() / 2 ** 30), node: process.version, kernel: release() },
            options: { ...o, only: [...o.only] },
            ...results,
            profiles,
            // the last log lines (warn and above) of every process, for diagnosis
            logs: Object.fromEntries(allChildren().map((c) => [`${c.name} (pid ${c.pid})`, c.tail])),
            table,
          },
          null,
          2,
        )}\n`,
      );
      process.stdout.write(`\n${table}\n\n`);
      for (const p of profiles) process.stdout.write(`[${p.process}] ${formatProfile(p)}\n\n`);
      say(`results written to ${file}`);
      process.exit(code);
    })();
    return finishing;
  }

  const deadline = setTimeout(() => void finish(1, `deadline of ${o.deadlineS} s passed; stopping with what was measured`), o.deadlineS * 1000);
  deadline.unref();
  process.on('SIGINT', () => void finish(130, 'interrupted'));
  process.on('SIGTERM', () => void finish(143, 'terminated'));

  try {
    say(`run ${runId}: checking Redis, RabbitMQ and PostgreSQL`);
    const problems = await ensureServices({ redisUrl, amqpUrl, databaseUrl }, (l) => say(`  ${l}`));
    if (problems.length) throw new Error(problems.join('; '));

    // ---- load workers -------------------------------------------------------
    if (o.cpuProf) mkdirSync(profDir, { recursive: true });
    /** node flags that make a process write its CPU profile into profDir */
    const prof = o.cpuProf ? ['--cpu-prof', '--cpu-prof-dir', profDir] : [];
    for (let i = 1; i <= o.workers; i++) {
      const child = spawnNode(`load-${i}`, resolve(__dirname, 'load-worker.ts'), {
        env: baseEnv({ TS_NODE_PROJECT: resolve(ROOT, 'scripts/tsconfig.json') }),
        nodeFlags: [...TS_NODE_FLAGS, ...prof],
        nofile: perWorkerConns + 1000,
        ipc: true,
      });
      children.push(child);
      workers.push({ child, rpc: createRpcClient(child) });
    }
    await Promise.all(workers.map((w) => w.rpc.call('ping', {}, 30_000)));

    // The servers behind the configured URLs (found by their listening port), with their child
    // processes: other Redis, RabbitMQ or Postgres instances on the host (a neighbour's tests) count as other.
    const portOf = (url: string, def: number) => Number(new URL(url).port || def);
    const infraRoots: [string, number][] = [
      ['redis', portOf(redisUrl, 6379)],
      ['rabbitmq', portOf(amqpUrl, 5672)],
      ['postgres', portOf(databaseUrl, 5432)],
    ];
    const infra: Tracked[] = infraRoots.map(([name, port]) => {
      const root = pidListeningOn(port);
      if (root === undefined) say(`no local process listens on port ${port}: ${name} CPU is not measured`);
      return { name, pids: () => (root === undefined ? [] : withDescendants(root)), isGroup: true };
    });
    const self: Tracked = { name: 'bench', pids: () => [process.pid] };
    const loadTracked: Tracked[] = workers.map((w) => ({ name: w.child.name, pids: () => [w.child.pid] }));
    const childTracked = (c: Child | undefined, name = c?.name ?? '?'): Tracked => ({ name, pids: () => (c && !c.exited ? [c.pid] : []) });

    const allConnect = async (group: string, kind: 'simplechat' | 'plain' | 'socketio', targets: (w: number) => { user: string; url: string; room?: string }[], jwtSecret: string | undefined, concurrency: number) => {
      const res = await Promise.all(
        workers.map((w, i) => w.rpc.call<ConnectResult>('connect', { group, kind, targets: targets(i), jwtSecret, concurrency, timeoutMs: 15_000 }, 300_000)),
      );
      const failed = res.reduce((n, r) => n + r.failed, 0);
      return { ms: Math.max(...res.map((r) => r.ms)), ok: res.reduce((n, r) => n + r.ok, 0), failed, firstError: res.find((r) => r.firstError)?.firstError };
    };
    const allClose = (group: string) => Promise.all(workers.map((w) => w.rpc.call('closeGroup', { group, timeoutMs: 3000 }, 60_000)));

    /** A helper server of the benchmark (bare-server.ts, sio-server.ts) as a child; resolves once it tells its port. */
    const startHelper = async (script: string, name: string, args: string[], nofile: number) => {
      const child = spawnNode(name, resolve(__dirname, script), {
        env: baseEnv({ TS_NODE_PROJECT: resolve(ROOT, 'scripts/tsconfig.json') }),
        nodeFlags: TS_NODE_FLAGS,
        args,
        nofile,
        ipc: true,
      });
      children.push(child);
      const port = await new Promise<number>((res, rej) => {
        const t = setTimeout(() => rej(new Error(`${name} did not start within 30 s: ${child.tail.join(' | ')}`)), 30_000);
        child.proc.once('message', (m: unknown) => (clearTimeout(t), res((m as { port: number }).port)));
        void child.exitedPromise.then(() => (clearTimeout(t), rej(new Error(`${name} exited: ${child.tail.join(' | ')}`))));
      });
      return { child, port };
    };
    const startBare = (mode: 'relay' | 'http', name: string) => startHelper('bare-server.ts', name, [mode], o.connections + 1000);

    // ---- raw limits ---------------------------------------------------------
    const raw: Record<string, Rate & { usage?: Record<string, ProcUsage>; note?: string }> = {};
    results.raw = raw;
    const rawMs = o.quick ? 1500 : 3000;
    if (o.only.has('raw')) {
      say(`raw: bare ws relay, ${o.users} connections, ${o.workers} load process(es)`);
      {
        const { child, port } = await startBare('relay', 'relay');
        const per = Math.floor(o.users / o.workers);
        const c = await allConnect('relay', 'plain', (w) => Array.from({ length: per }, (_, i) => ({ user: String(w * per + i), url: `ws://127.0.0.1:${port}/?i=${w * per + i}` })), undefined, 100);
        if (c.failed) throw new Error(`bare relay: ${c.failed} connections failed (${c.firstError})`);
        const win = measure([childTracked(child), ...loadTracked, ...infra]);
        const res = await Promise.all(workers.map((w) => w.rpc.call<{ delivered: number; seconds: number; loopDelayP99Ms: number }>('relay', { group: 'relay', window: 2000, warmupMs: 500, durationMs: rawMs * 2, bodyChars: o.body }, rawMs * 2 + 30_000)));
        const usage = win.stop();
        const delivered = res.reduce((n, r) => n + r.delivered, 0);
        const seconds = Math.max(...res.map((r) => r.seconds));
        raw.relay = { perSec: delivered / seconds, count: delivered, seconds, usage };
        const relayUs = ((usage.relay?.cpu ?? 0) / 100 / raw.relay.perSec) * 1e6;
        rows.push({ part: 'raw', test: `bare ws relay (1 process, ${o.users} sockets, JSON.parse + send)`, rate: raw.relay.perSec, cpu: usage, note: `msg/s, closed loop; relay ≈ ${relayUs.toFixed(1)} µs CPU/msg` });
        await allClose('relay');
        await child.stop(5000);
      }
      say('raw: undici POST loop to a bare http server');
      {
        const { child, port } = await startBare('http', 'http');
        const one = JSON.stringify({ items: [{ users: ['u1'], frame: 'x'.repeat(o.body + 60) }] });
        const fifty = JSON.stringify({ items: Array.from({ length: 50 }, (_, i) => ({ users: [`u${i}`], frame: 'x'.repeat(o.body + 60) })) });
        for (const [key, body, per] of [['post1', one, 1], ['post50', fifty, 50]] as const) {
          const win = measure([childTracked(child), self]);
          const r = await undiciPostLoop(`http://127.0.0.1:${port}`, body, { connections: 8, concurrency: 64, durationMs: rawMs });
          const usage = win.stop();
          raw[key] = { ...r, usage };
          rows.push({
            part: 'raw',
            test: `undici POST loop, ${per} msg/POST (8 conns, 64 in flight)`,
            rate: r.perSec,
            cpu: usage,
            note: per === 1 ? 'POSTs/s' : `POSTs/s = ${num(r.perSec * per)} msg/s`,
          });
        }
        await child.stop(5000);
      }
      say('raw: RabbitMQ confirm-publish and consume+ack on a private queue');
      {
        const q = `scbench.${runId}.raw`;
        const dropQueue = async () => {
          const conn = await amqp.connect(amqpUrl, { timeout: 5000 });
          conn.on('error', () => undefined);
          const ch = await conn.createChannel();
          ch.on('error', () => undefined);
          await ch.deleteQueue(q).catch(() => undefined);
          await conn.close().catch(() => undefined);
        };
        cleanups.push(dropQueue);
        const win = measure([self, ...infra]);
        const pub = await confirmPublishLoop(amqpUrl, q, { bodyBytes: o.body + 60, batch: 1000, durationMs: rawMs });
        const pu = win.stop();
        raw.confirmPublish = { ...pub, usage: pu };
        rows.push({ part: 'raw', test: 'RabbitMQ confirm-publish (persistent, durable queue, confirms per 1,000)', rate: pub.perSec, cpu: pu, note: 'msg/s' });
        const win2 = measure([self, ...infra]);
        const con = await consumeAckLoop(amqpUrl, q, { count: pub.count, prefetch: 1000, timeoutMs: rawMs * 4 + 10_000 });
        const cu = win2.stop();
        raw.consumeAck = { ...con, usage: cu };
        rows.push({ part: 'raw', test: 'RabbitMQ consume + ack each (prefetch 1,000)', rate: con.perSec, cpu: cu, note: `msg/s (${num(con.count)} consumed)` });
        await dropQueue();
      }
      say('raw: Postgres multi-row INSERT and COPY into a private table like messages');
      {
        const u = new URL(databaseUrl);
        u.pathname = `/sc_bench_${runId}_raw`;
        rawDbUrl = u.toString();
        await createDatabase(rawDbUrl);
        await migrate(rawDbUrl);
        const win = measure([self, ...infra]);
        const ins = await multiRowInsertLoop(rawDbUrl, 'raw_messages', { batchRows: 5000, durationMs: rawMs * 2, bodyChars: o.body });
        const iu = win.stop();
        raw.insert = { ...ins, usage: iu };
        rows.push({ part: 'raw', test: 'Postgres multi-row INSERT ... SELECT unnest (5,000 rows/stmt, 1 conn, same indexes as messages)', rate: ins.perSec, cpu: iu, note: `rows/s (${num(ins.count)} rows)` });
        const win2 = measure([self, ...infra]);
        const copy = await copyLoop(rawDbUrl, 'raw_copy', { rows: o.quick ? 50_000 : 200_000, bodyChars: o.body, timeoutMs: 60_000 });
        const cu = win2.stop();
        if (copy) {
          raw.copy = { ...copy, usage: cu };
          rows.push({ part: 'raw', test: 'Postgres COPY (psql \\copy, same table and indexes)', rate: copy.perSec, cpu: cu, note: `rows/s (${num(copy.count)} rows)` });
        }
        await dropDatabase(rawDbUrl);
        rawDbUrl = undefined;
      }
    }

    // ---- presence fan-out, on a cluster of its own (before the run's cluster starts) ----
    if (o.only.has('presence')) {
      await runPresence({
        o,
        runId,
        redisUrl,
        amqpUrl,
        databaseUrl,
        profFlags: prof,
        workers,
        allConnect,
        allClose,
        childTracked,
        others: () => [...loadTracked, self, ...infra],
        cleanups,
        say,
        rows,
        results,
      });
    }

    // ---- SimpleChat ---------------------------------------------------------
    const needCluster = ['cross', 'same', 'hold', 'sio', 'drain', 'conn', 'rooms', 'receipts'].some((p) => o.only.has(p));
    if (!needCluster && !o.only.has('partitions')) return await finish(0);
    let wsUrls: string[] = [];
    let jwtSecret = '';
    let serviceTracked: Tracked[] = [];
    let queuePrefix: string | undefined;
    /** the broker of the cluster in use, its queues, and its processes when they are not the local broker's (partitions.ts) */
    let mqUrl = amqpUrl;
    let queuePartitions = 1;
    let brokerTracked: Tracked | undefined;
    if (!needCluster) {
      // the partitions part starts clusters of its own
    } else if (o.ws) {
      wsUrls = o.ws;
      const secret = o.jwtSecret ?? env.JWT_SECRET;
      if (!secret) throw new Error('--ws needs the cluster JWT secret (--jwt-secret or JWT_SECRET)');
      jwtSecret = secret;
      say(`using the running instances ${wsUrls.join(', ')} (no server CPU, drain or connection memory)`);
    } else {
      say(`starting a private cluster (database sc_bench_${runId}, prefix scbench:${runId}:)`);
      cluster = await startCluster({
        runId,
        redisUrl,
        amqpUrl,
        databaseUrl,
        extraEnv: o.env,
        wsNodeFlags: [...prof, ...o.wsNodeFlags],
        persistNodeFlags: prof,
        discoverNodeFlags: prof,
        gateways: o.instances,
        wsNofile: Math.max(o.users, o.connections) + 1000,
        log: say,
      });
      const c = cluster;
      wsUrls = c.wsUrls;
      jwtSecret = c.jwtSecret;
      queuePrefix = c.queuePrefix;
      serviceTracked = [...c.ws.map((w) => childTracked(w)), childTracked(c.discover), { name: 'persist', pids: () => (c.persist.exited ? [] : [c.persist.pid]) }];
      results.cluster = { databaseUrl: c.databaseUrl.replace(/\/\/[^@/]*@/, '//***@'), keyPrefix: c.keyPrefix, queuePrefix: c.queuePrefix, env: o.env };
    }
    /** processes of the Socket.IO comparison while it runs */
    let sioTracked: Tracked[] = [];
    const infraNow = () => (brokerTracked ? infra.map((t) => (t.name === 'rabbitmq' ? (brokerTracked as Tracked) : t)) : infra);
    const tracked = () => [...serviceTracked, ...sioTracked, ...loadTracked, self, ...infraNow()];

    const connectMq = async () => {
      const conn = await amqp.connect(mqUrl, { timeout: 5000 });
      conn.on('error', () => undefined);
      mq = { conn };
    };
    if (queuePrefix) await connectMq();
    const queueDepth = async (): Promise<number | undefined> => {
      if (!mq || !queuePrefix) return undefined;
      try {
        if (!mq.ch) {
          const ch = await mq.conn.createChannel();
          ch.on('error', () => undefined);
          ch.on('close', () => {
            if (mq?.ch === ch) delete mq.ch;
          });
          mq.ch = ch;
        }
        let n = 0;
        for (const q of topology(queuePrefix, { partitions: queuePartitions }).queues) n += (await mq.ch.checkQueue(q)).messageCount;
        return n;
      } catch {
        return undefined;
      }
    };
    const waitQueueEmpty = async (maxMs: number) => {
      const end = Date.now() + maxMs;
      while (Date.now() < end) {
        const d = await queueDepth();
        if (d === undefined || d === 0) return;
        await sleep(200);
      }
    };

    const steps: StepRow[] = [];
    results.steps = steps;
    const loadParts = ['cross', 'same', 'hold', 'receipts'].some((p) => o.only.has(p));
    /** connects the load users to the gateways of wsUrls, half on each side; measures the idle cluster */
    const connectLoadUsers = async (part = 'cluster', what = '', idleRow = true) => {
      // Per worker: `half` users on the odd-numbered instances (ws-1, ws-3, ...), `half` on the
      // even-numbered ones, user i of a side on that side's instance i mod perSide.
      const perSide = o.instances / 2;
      const half = Math.floor(o.users / o.workers / 2 / perSide) * perSide;
      if (half < 2 * perSide) throw new Error('--users is too small for the worker and instance count');
      say(`connecting ${half * 2 * o.workers} users (${(half * 2 * o.workers) / o.instances} per instance, ${o.instances} instances)`);
      const c = await allConnect(
        'load',
        'simplechat',
        (w) => [
          ...Array.from({ length: half }, (_, i) => ({ user: `u${runId}w${w}a${i}`, url: wsUrls[2 * (i % perSide)] as string })),
          ...Array.from({ length: half }, (_, i) => ({ user: `u${runId}w${w}b${i}`, url: wsUrls[2 * (i % perSide) + 1] as string })),
        ],
        jwtSecret,
        50,
      );
      if (c.failed) throw new Error(`load users: ${c.failed} of ${c.ok + c.failed} failed to register (${c.firstError})`);
      say(`registered ${c.ok} users in ${(c.ms / 1000).toFixed(1)} s`);
      await sleep(500);
      if (!idleRow) return;
      // the cost of standing still (heartbeats, metrics, timers) is the floor under every step's CPU
      const idle = measure(tracked());
      await sleep(o.quick ? 1500 : 3000);
      const idleUsage = idle.stop();
      results.idle = idleUsage;
      rows.push({ part, test: `${what}idle, ${c.ok} users connected`, cpu: idleUsage, note: 'baseline CPU with no messages' });
    };
    if (loadParts) await connectLoadUsers();

    let stepNo = 0;
    const warnCounts = () => Object.fromEntries((cluster ? [...cluster.ws, cluster.discover, cluster.persist] : []).map((ch) => [ch.name, ch.warnings]));
    const scrapeAll = async (): Promise<Record<string, Counters>> => {
      if (!cluster) return {};
      return scrapeServices(cluster.httpUrls(), cluster.internalToken);
    };
    /** `receipts`: what the receiving connections answer every message with; `settle`: the whole-step CPU window runs on until the queue is empty */
    const runLoad = async (kind: StepRow['kind'], mode: 'cross' | 'same', rate: number, durationMs: number, opts: { engine?: 'socketio'; receipts?: ReceiptKind[]; settle?: boolean } = {}): Promise<StepRow> => {
      const { engine, receipts } = opts;
      stepNo++;
      const warnBefore = warnCounts();
      const countersBefore = await scrapeAll();
      const win = measure(tracked());
      // CPU % over the sending plus 1 s (a drain that waits out a lost message must not dilute it);
      // CPU per message over the whole step, drain included (late deliveries cost CPU too).
      const whole = measure(tracked(), 1000);
      let usage: Record<string, ProcUsage> | undefined;
      const cut = setTimeout(() => (usage = win.stop()), durationMs + 1000);
      const res = await Promise.all(
        workers.map((w) =>
          w.rpc.call<RunResult>(
            'run',
            { group: engine === 'socketio' ? 'sio' : 'load', step: stepNo, mode, perSide: engine === 'socketio' ? 1 : o.instances / 2, ratePerSec: rate / o.workers, durationMs, drainMs: o.drainMs, bodyChars: o.body, ...(receipts ? { receipts } : {}) } satisfies RunArgs,
            durationMs + o.drainMs + 60_000,
          ),
        ),
      );
      clearTimeout(cut);
      usage ??= win.stop();
      if (opts.settle) {
        // what the step queued for storage (receipts too) is stored inside the window
        await sleep(200);
        await waitQueueEmpty(10_000);
        await sleep(300);
      }
      const usageWhole = whole.stop();
      const countersAfter = await scrapeAll();
      const counters = deltaAll(countersBefore, countersAfter);
      const queueAtEnd = await queueDepth();
      const sum = (f: (r: RunResult) => number) => res.reduce((n, r) => n + f(r), 0);
      const merge = (k: 'errors' | 'closed' | 'receiptErrors') => res.reduce<Record<string, number>>((acc, r) => { for (const [c, n] of Object.entries(r[k])) acc[c] = (acc[c] ?? 0) + n; return acc; }, {});
      const ack = Histogram.merge(res.map((r) => r.ack));
      const del = Histogram.merge(res.map((r) => r.delivery));
      const settled = Histogram.merge(res.map((r) => r.deliverySettled));
      const warnAfter = warnCounts();
      const seconds = Math.max(...res.map((r) => r.sendMs)) / 1000;
      const row: StepRow = {
        kind,
        ...(engine ? { engine } : {}),
        mode,
        offered: rate,
        seconds,
        planned: sum((r) => r.planned),
        sent: sum((r) => r.sent),
        sentPerSec: sum((r) => r.sent) / seconds,
        acked: sum((r) => r.acked),
        ackedPerSec: sum((r) => r.acked) / (Math.max(...res.map((r) => r.lastAckMs)) / 1000 || 1),
        delivered: sum((r) => r.delivered),
        deliveredPerSec: sum((r) => r.delivered) / (Math.max(...res.map((r) => r.lastDeliveryMs)) / 1000 || 1),
        lost: sum((r) => r.lost),
        duplicated: sum((r) => r.duplicated),
        noAnswer: sum((r) => r.noAnswer),
        errors: merge('errors'),
        errorSamples: Object.assign({}, ...res.map((r) => r.errorSamples)) as Record<string, string>,
        closed: merge('closed'),
        hints: sum((r) => r.hints),
        late: sum((r) => r.late),
        ...(ack.n ? { ackP50: quantile(ack, 0.5), ackP99: quantile(ack, 0.99) } : {}),
        ...(del.n ? { deliveryP50: quantile(del, 0.5), deliveryP99: quantile(del, 0.99), deliveryMax: del.max } : {}),
        ...(settled.n ? { deliverySettledP99: quantile(settled, 0.99) } : {}),
        ...(queueAtEnd === undefined ? {} : { queueAtEnd }),
        loadLoopDelayP99Ms: Math.max(...res.map((r) => r.loopDelayP99Ms)),
        slowBySecond: res.reduce<number[]>((acc, r) => {
          r.slowBySecond.forEach((n, i) => (acc[i] = (acc[i] ?? 0) + n));
          return acc;
        }, []),
        usage,
        usageWhole,
        counters,
        warnings: Object.fromEntries(Object.entries(warnAfter).filter(([k, v]) => v > (warnBefore[k] ?? 0)).map(([k, v]) => [k, v - (warnBefore[k] ?? 0)])),
        crashed: cluster ? cluster.crashed().map((ch) => ch.name) : [],
        ...(receipts ? { receipts } : {}),
        receiptsSent: sum((r) => r.receiptsSent),
        receiptPushes: sum((r) => r.receiptPushes),
        receiptErrors: merge('receiptErrors'),
        receiptErrorSamples: Object.assign({}, ...res.map((r) => r.receiptErrorSamples)) as Record<string, string>,
        outOfOrder: sum((r) => r.outOfOrder),
      };
      steps.push(row);
      const errs = Object.values(row.errors).reduce((a, b) => a + b, 0);
      say(
        `${kind} ${mode} ${num(rate)}/s: sent ${num(row.sentPerSec)}/s acked ${num(row.ackedPerSec)}/s delivered ${num(row.deliveredPerSec)}/s lost ${row.lost} dup ${row.duplicated} unanswered ${row.noAnswer} errors ${errs}; delivery p50/p99/max ${row.deliveryP50?.toFixed(1)}/${row.deliveryP99?.toFixed(1)}/${row.deliveryMax?.toFixed(0)} ms; queue ${row.queueAtEnd ?? '?'}`,
      );
      return row;
    };
    const errorsOf = errorCount;
    const clean = (r: StepRow) => r.lost === 0 && r.noAnswer === 0 && errorsOf(r) === 0 && r.crashed.length === 0 && Object.keys(r.closed).length === 0;
    // The client kept the pace (else the row measures the load generator) and everything arrived within the bound.
    const passes = (r: StepRow, p99Ms: number) => clean(r) && r.sentPerSec >= 0.97 * r.offered && r.delivered === r.sent && (r.deliveryP99 ?? Infinity) < p99Ms;
    /** CPU per delivered message of the server side (SimpleChat services + Redis, RabbitMQ, Postgres): noise-resistant, unlike latency */
    const SERVER_SIDE: [string, string][] = [...Array.from({ length: o.instances }, (_, i): [string, string] => [`ws-${i + 1}`, `ws${i + 1}`]), ['discover', 'disc'], ['persist', 'pers'], ['redis', 'redis'], ['rabbitmq', 'rmq'], ['postgres', 'pg']];
    const SIO_SIDE: [string, string][] = [['sio-1', 'sio1'], ['sio-2', 'sio2'], ['redis', 'redis']];
    /**
     * One figure per delivered message for each server process of the row's engine, and their sum:
     * CPU (µs; noise moves it) and wake-ups (voluntary context switches, which CPU time on a VM
     * follows and noise does not move).
     */
    const perMessage = (r: StepRow, of: (u: ProcUsage) => number | undefined): { total: number; parts: Record<string, number> } | undefined => {
      if (!r.delivered || !(r.engine ? sioTracked : serviceTracked).length) return undefined;
      const parts: Record<string, number> = {};
      let total = 0;
      for (const [k, short] of r.engine ? SIO_SIDE : SERVER_SIDE) {
        const u = r.usageWhole[k];
        const value = u && of(u);
        if (value === undefined) continue;
        parts[short] = value / r.delivered;
        total += parts[short];
      }
      return { total, parts };
    };
    const stepNote = (r: StepRow) => {
      const bits: string[] = [];
      const per = perMessage(r, (u) => u.cpuSeconds * 1e6);
      const hostBusy = Object.values(r.usage).reduce((n, u) => n + u.cpu, 0);
      bits.push(`host busy ${Math.round(hostBusy)}% of ${cpus().length * 100}%`);
      if (per) bits.push(`server CPU ${Math.round(per.total)} µs/msg (${Object.entries(per.parts).map(([k, v]) => `${k} ${Math.round(v)}`).join(' ')})`);
      const wakes = perMessage(r, (u) => u.wakes);
      if (wakes) bits.push(`server wake-ups ${wakes.total.toFixed(1)}/msg (${Object.entries(wakes.parts).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(' ')})`);
      // batching seen by the services themselves
      const published = total(r.counters, 'published_messages_total');
      const publishes = total(r.counters, 'publish_confirms_total');
      const fwdFrames = total(r.counters, 'forward_frames_total');
      const fwds = total(r.counters, 'forwards_total');
      const discoverCalls = total(r.counters, 'http_requests_total', 'route="/internal/lookup"');
      const batching: string[] = [];
      if (publishes) batching.push(`${(published / publishes).toFixed(1)} msg/AMQP publish`);
      if (fwds) batching.push(`${(fwdFrames / fwds).toFixed(1)} frames/forward`);
      if (!r.engine && r.delivered && Object.keys(r.counters).length) batching.push(`${(discoverCalls / r.delivered).toFixed(2)} lookups/msg`);
      if (batching.length) bits.push(batching.join(', '));
      if (r.sentPerSec < 0.97 * r.offered) bits.push(`client sent only ${num(r.sentPerSec)}/s`);
      if (r.queueAtEnd) bits.push(`queue backlog ${num(r.queueAtEnd)} batches`);
      bits.push(...outcomeNotes(r));
      return bits.join('; ');
    };
    const loadRow = (part: string, test: string, r: StepRow, note?: string): TableRow => outcomeRow(part, test, r, [note, stepNote(r)].filter(Boolean).join('; '));

    for (const mode of ['cross', 'same'] as const) {
      if (!o.only.has(mode)) continue;
      say(`${mode}-instance steps: ${o.rates.map((r) => num(r)).join(', ')} msg/s, ${o.stepMs / 1000} s each`);
      for (const rate of o.rates) {
        const r = await runLoad('step', mode, rate, o.stepMs);
        rows.push(loadRow(mode === 'cross' ? 'cross' : 'same', `step ${num(rate)}/s for ${o.stepMs / 1000} s`, r));
        if ((r.deliveryP99 ?? Infinity) > 1000 || !clean(r)) {
          say(`${mode}: stopping the steps (p99 over 1 s, a loss, an error or a crash)`);
          break;
        }
        await waitQueueEmpty(o.quick ? 3000 : 15_000);
      }
      await waitQueueEmpty(o.quick ? 5000 : 30_000);
    }

    // ---- receipts: CPU per message without and with them, alternated ---------
    if (o.only.has('receipts') && !cluster) {
      rows.push({ part: 'HEADLINE', test: 'receipts', note: 'not run: receipts compare the server CPU of the private cluster (not --ws)' });
    } else if (o.only.has('receipts')) {
      await runReceipts({
        o,
        runLoad: (rate, durationMs, opts) => runLoad(opts.warmup ? 'warmup' : 'step', 'cross', rate, durationMs, opts),
        loadRow,
        serverSide: SERVER_SIDE,
        waitQueueEmpty,
        say,
        rows,
        results,
      });
      await waitQueueEmpty(o.quick ? 5000 : 30_000);
    }

    const holds: Record<string, StepRow | undefined> = {};
    results.holds = holds;
    const crashedNow = () => cluster?.crashed().map((c) => c.name) ?? [];
    if (o.only.has('hold') && crashedNow().length) {
      rows.push({ part: 'HEADLINE', test: 'rates held', note: `not run: ${crashedNow().join(', ')} crashed during the steps` });
    } else if (o.only.has('hold')) {
      const warmedNote = o.warmupMs > 0 ? ` (after ${o.warmupMs / 1000} s at that rate)` : '';
      for (const [mode, p99] of [['cross', 50], ['same', 20]] as const) {
        const stepped = steps.filter((s) => s.kind === 'step' && s.mode === mode);
        // A hold starts after a warm-up at its rate, so a step is a candidate when it passed once
        // past its first second (the jump from idle, which the step's own p99 includes).
        const candidateP99 = (s: StepRow) => (o.warmupMs > 0 ? Math.min(s.deliveryP99 ?? Infinity, s.deliverySettledP99 ?? Infinity) : s.deliveryP99);
        // Without steps (--only hold), try the rates from the top down.
        const candidates = stepped.length ? stepped.filter((s) => passes({ ...s, deliveryP99: candidateP99(s) }, p99)).map((s) => s.offered).sort((a, b) => b - a) : [...o.rates].sort((a, b) => b - a);
        const holdAt = async (rate: number): Promise<StepRow | undefined> => {
          say(`hold ${mode} ${num(rate)}/s for ${o.holdMs / 1000} s after ${o.warmupMs / 1000} s at that rate (needs 0 lost and delivery p99 < ${p99} ms)`);
          // The hold measures the rate sustained, not the jump to it from idle (the steps show that).
          if (o.warmupMs > 0) await runLoad('warmup', mode, rate, o.warmupMs);
          const r = await runLoad('hold', mode, rate, o.holdMs);
          await waitQueueEmpty(o.quick ? 5000 : 30_000);
          if (passes(r, p99)) return r;
          rows.push(loadRow(mode, `hold ${num(rate)}/s for ${o.holdMs / 1000} s${warmedNote}: not held`, r));
          return undefined;
        };
        let held: StepRow | undefined;
        for (const rate of candidates.slice(0, o.quick ? 1 : 3)) {
          held = await holdAt(rate);
          if (held) break;
        }
        // The steps are far apart (2,000 then 5,000): the rate held lies between the one held and
        // the lowest rate above it that was not. Halve that gap, at most twice, while it is more
        // than a tenth of the rate held.
        const tried = stepped.length ? stepped.map((s) => s.offered) : o.rates;
        let above = held ? Math.min(...tried.filter((rate) => rate > (held as StepRow).offered)) : Infinity;
        for (let i = 0; held && !o.quick && i < 2 && Number.isFinite(above); i++) {
          const mid = Math.round((held.offered + above) / 2 / 250) * 250;
          if (mid - held.offered <= held.offered / 10 || mid >= above) break;
          const r = await holdAt(mid);
          if (r) held = r;
          else above = mid;
        }
        holds[mode] = held;
        const relay = raw.relay?.perSec;
        const confirm = raw.confirmPublish?.perSec;
        if (!held) {
          // Say what the steps did reach, so a miss is still a number.
          const clean0 = stepped.filter((st) => passes(st, 1000)).sort((a, b) => b.offered - a.offered)[0];
          const best = clean0 ? `; best step with 0 lost and p99 < 1 s: ${num(clean0.offered)}/s at delivery p99 ${Math.round(clean0.deliveryP99 ?? 0)} ms` : '';
          rows.push({ part: 'HEADLINE', test: `${mode}-instance rate held ${o.holdMs / 1000} s, 0 lost, p99 < ${p99} ms`, note: `${candidates.length ? 'no rate held' : `no step reached p99 < ${p99} ms`}${best}` });
          continue;
        }
        const target = mode === 'cross' ? `target ≥ 10,000/s and ≥ 60% of confirm-publish` : `target ≥ 70% of confirm-publish`;
        const met = mode === 'cross' ? held.offered >= 10_000 && (pct(held.offered, confirm) ?? 0) >= 60 : (pct(held.offered, confirm) ?? 0) >= 70;
        rows.push(
          loadRow('HEADLINE', `${mode}-instance rate held ${o.holdMs / 1000} s${warmedNote}, 0 lost, p99 < ${p99} ms`, held, `${pct(held.offered, relay) ?? '?'}% of bare relay, ${pct(held.offered, confirm) ?? '?'}% of confirm-publish (${target}: ${confirm ? (met ? 'met' : 'NOT met') : 'no baseline'})`),
        );
      }
    }
    if (loadParts) await allClose('load');

    // ---- Socket.IO with its Redis adapter, side by side ------------------------
    if (o.only.has('sio')) {
      const key = `scbench:${runId}:sio`;
      const nodes: { child: Child; url: string }[] = [];
      for (const name of ['sio-1', 'sio-2']) {
        const { child, port } = await startHelper('sio-server.ts', name, [redisUrl, key], o.users + 1000);
        nodes.push({ child, url: `http://127.0.0.1:${port}` });
      }
      sioTracked = nodes.map((n) => childTracked(n.child));
      const half = Math.floor(o.users / o.workers / 2);
      say(`Socket.IO + Redis adapter: two nodes, ${half * 2 * o.workers} users, cross-node steps ${o.rates.map((r) => num(r)).join(', ')} msg/s`);
      const c = await allConnect(
        'sio',
        'socketio',
        (w) => [...Array.from({ length: half }, (_, i) => ({ user: `s${runId}w${w}a${i}`, url: nodes[0]?.url as string })), ...Array.from({ length: half }, (_, i) => ({ user: `s${runId}w${w}b${i}`, url: nodes[1]?.url as string }))],
        undefined,
        50,
      );
      if (c.failed) throw new Error(`Socket.IO users: ${c.failed} of ${c.ok + c.failed} failed to connect (${c.firstError})`);
      await sleep(500);
      for (const rate of o.rates) {
        const r = await runLoad('step', 'cross', rate, o.stepMs, { engine: 'socketio' });
        rows.push(loadRow('socket.io', `cross-node step ${num(rate)}/s for ${o.stepMs / 1000} s`, r));
        if ((r.deliveryP99 ?? Infinity) > 1000 || !clean(r)) {
          say('socket.io: stopping the steps (p99 over 1 s, a loss, an error or a crash)');
          break;
        }
        await sleep(1000);
      }
      await allClose('sio');
      for (const n of nodes) n.child.proc.kill('SIGTERM');
      await Promise.all(nodes.map((n) => n.child.exitedPromise));
      sioTracked = [];
    }

    // ---- rooms: SimpleChat and Socket.IO side by side ----------------------
    if (o.only.has('rooms') && !cluster) {
      rows.push({ part: 'HEADLINE', test: 'rooms', note: 'not run: rooms need the private cluster (not --ws)' });
    } else if (o.only.has('rooms') && cluster && crashedNow().length) {
      rows.push({ part: 'HEADLINE', test: 'rooms', note: `not run: ${crashedNow().join(', ')} crashed` });
    } else if (o.only.has('rooms') && cluster) {
      await runRooms({
        o,
        runId,
        redisUrl,
        cluster,
        workers,
        allConnect,
        allClose,
        startHelper,
        childTracked,
        tracked,
        setSioTracked: (t) => (sioTracked = t),
        scrapeAll,
        waitQueueEmpty,
        warnCounts,
        nextStep: () => ++stepNo,
        say,
        rows,
        results,
      });
    }

    // ---- writer drain -------------------------------------------------------
    if (o.only.has('drain') && cluster && crashedNow().length) {
      rows.push({ part: 'HEADLINE', test: 'writer drain', note: `not run: ${crashedNow().join(', ')} crashed` });
    } else if (o.only.has('drain') && cluster) {
      say(`writer: stopping SvPersist, queueing a backlog of ${num(o.backlog)} messages (${o.perPayload} per AMQP message), timing the drain`);
      await waitQueueEmpty(30_000);
      const c = cluster;
      let win: ReturnType<typeof measure> | undefined;
      const d: DrainResult = await writerDrain(c, { amqpUrl, runId, messages: o.backlog, perPayload: o.perPayload, bodyChars: o.body, timeoutMs: o.quick ? 60_000 : 180_000 }, () => {
        // CPU from SvPersist's spawn on (its start-up included)
        win = measure([{ name: 'persist', pids: () => (c.persist.exited ? [] : [c.persist.pid]) }, ...infra, self]);
      });
      const usage = win?.stop();
      results.drain = { ...d, usage };
      const insert = raw.insert?.perSec;
      const consume = raw.consumeAck?.perSec;
      const floor = insert && consume ? Math.min(insert, consume) : (insert ?? consume);
      const share = pct(d.rowsPerSec, floor);
      const met = d.rowsPerSec >= 23_000 && (share ?? 0) >= 50;
      rows.push({
        part: 'HEADLINE',
        test: `writer drain of a ${num(o.backlog)}-message backlog (${o.perPayload}/AMQP msg)`,
        rate: d.rowsPerSec,
        ...(usage ? { cpu: usage } : {}),
        note: `rows/s over ${d.drainSeconds.toFixed(1)} s (+${(d.startupMs / 1000).toFixed(1)} s start); ${pct(d.rowsPerSec, insert) ?? '?'}% of bare INSERT, ${pct(d.rowsPerSec, consume) ?? '?'}% of bare consume+ack (target ≥ 23,000 rows/s and ≥ 50% of the lower: ${floor ? (met ? 'met' : 'NOT met') : 'no baseline'}); queue left ${d.queueLeft}`,
      });
    }

    // ---- connections --------------------------------------------------------
    if (o.only.has('conn')) {
      const n = Math.floor(o.connections / o.workers) * o.workers;
      const settle = async (pid: number) => {
        // RSS after the allocator settles: the lowest of a few readings a little apart
        let low = Infinity;
        for (let i = 0; i < 4; i++) {
          await sleep(500);
          low = Math.min(low, rssBytes(pid) ?? Infinity);
        }
        return low;
      };
      say(`connections: ${num(n)} idle sockets on a bare ws server`);
      let bareKiB: number | undefined;
      {
        const { child, port } = await startBare('relay', 'relay');
        const before = await settle(child.pid);
        const per = n / o.workers;
        const c = await allConnect('idle', 'plain', (w) => Array.from({ length: per }, (_, i) => ({ user: String(w * per + i), url: `ws://127.0.0.1:${port}/?i=${w * per + i}` })), undefined, 200);
        const after = await settle(child.pid);
        bareKiB = (after - before) / 1024 / c.ok;
        results.bareConnections = { n: c.ok, failed: c.failed, rssBeforeMb: before / 2 ** 20, rssAfterMb: after / 2 ** 20, kibPerConn: bareKiB, openMs: c.ms };
        await allClose('idle');
        await child.stop(5000);
      }
      if (cluster) {
        say(`connections: ${num(n)} idle authenticated connections on a fresh SvWebsocket instance`);
        const ws3 = await cluster.addWs(`ws-${o.instances + 1}`);
        const before = await settle(ws3.child.pid);
        const win = measure([childTracked(ws3.child), childTracked(cluster.discover), ...loadTracked, ...infra]);
        const c = await allConnect('idle', 'simplechat', (w) => Array.from({ length: n / o.workers }, (_, i) => ({ user: `c${runId}w${w}i${i}`, url: ws3.url })), jwtSecret, 100);
        const usage = win.stop();
        const after = await settle(ws3.child.pid);
        let reported: number | undefined;
        try {
          const res = await request(`${ws3.httpUrl}/health`, { headersTimeout: 5000, bodyTimeout: 5000 });
          reported = ((await res.body.json()) as { connections?: number }).connections;
        } catch {
          // health is only a cross-check
        }
        const kib = (after - before) / 1024 / Math.max(1, c.ok);
        results.connections = { n: c.ok, failed: c.failed, firstError: c.firstError, serverCounted: reported, rssBeforeMb: before / 2 ** 20, rssAfterMb: after / 2 ** 20, kibPerConn: kib, registerMs: c.ms, usage };
        rows.push({
          part: 'HEADLINE',
          test: `${num(c.ok)} idle authenticated connections on one instance`,
          rate: c.ok / (c.ms / 1000),
          cpu: usage,
          note: `${kib.toFixed(1)} KiB RSS per connection (bare ws ${bareKiB.toFixed(1)} KiB; target ≤ 16: ${kib <= 16 ? 'met' : 'NOT met'}); all registered in ${(c.ms / 1000).toFixed(1)} s (rate = registrations/s)${c.failed ? `; ${c.failed} FAILED: ${c.firstError}` : ''}`,
        });
        await allClose('idle');
        await cluster.stopWs(ws3.child);
      } else {
        rows.push({ part: 'HEADLINE', test: `${num(n)} idle sockets on a bare ws server`, note: `${bareKiB.toFixed(1)} KiB RSS per connection (SimpleChat not measured with --ws)` });
      }
    }
    // ---- partitions: the writers' drain by partition count, then classic vs quorum queues ----
    if (o.only.has('partitions')) {
      const postgresServer = infra.find((t) => t.name === 'postgres') as Tracked;
      const localBroker = infra.find((t) => t.name === 'rabbitmq') as Tracked;
      const ctx: PartitionContext = {
        o,
        runId,
        redisUrl,
        amqpUrl,
        databaseUrl,
        profFlags: prof,
        wsNodeFlags: [...prof, ...o.wsNodeFlags],
        postgresServer,
        localBroker,
        say,
        rows,
        results,
        cleanups,
        async useCluster(use) {
          if (mq) await mq.conn.close().catch(() => undefined);
          mq = undefined;
          if (!use) {
            if (queuePrefix) await allClose('load');
            for (const ch of cluster?.children() ?? []) if (!retired.includes(ch)) retired.push(ch);
            cluster = undefined;
            serviceTracked = [];
            queuePrefix = undefined;
            brokerTracked = undefined;
            mqUrl = amqpUrl;
            queuePartitions = 1;
            return;
          }
          const c = use.cluster;
          cluster = c;
          wsUrls = c.wsUrls;
          jwtSecret = c.jwtSecret;
          queuePrefix = c.queuePrefix;
          serviceTracked = [...c.ws.map((w) => childTracked(w)), childTracked(c.discover), { name: 'persist', pids: () => (c.persist.exited ? [] : [c.persist.pid]) }];
          brokerTracked = use.broker;
          mqUrl = use.amqpUrl;
          queuePartitions = use.partitions;
          await connectMq();
          await connectLoadUsers('queues', `${use.label}: `, use.idleRow);
        },
        runLoad: (rate, durationMs) => runLoad('step', 'cross', rate, durationMs, { settle: true }),
        loadRow,
        serverSide: SERVER_SIDE,
        waitQueueEmpty,
      };
      await runPartitionDrains(ctx);
      await runQueueTypes(ctx);
    }
    await finish(0);
  } catch (err) {
    await finish(1, `failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  }
}

void main();
