/**
 * The partitions part of the benchmark (`--partitions 1,2,4`).
 *
 * Writer drain: for each partition count N, a cluster of its own with
 * QUEUE_PARTITIONS=N and two SvPersist (no gateways: nothing else writes),
 * SvPersist stopped, a backlog published to the partition queues as the
 * gateways publish it (each batch split by partition), both SvPersist started
 * and the drain timed from the first row to the last committed (drain.ts).
 * Meanwhile SvPersist's backends in pg_stat_activity are sampled about every
 * 10 ms for advisory lock waits (lock-waits.ts), and the CPU of both
 * SvPersist, of the Postgres backends serving them and of the broker is read
 * from /proc.
 *
 * Queue types: the message path (cross-instance steps of index.ts) on three
 * clusters one after the other: classic queues on the local broker, quorum
 * queues on it, and quorum queues on a three-node RabbitMQ cluster started
 * here (test/clusters/rabbit-cluster.ts, on --rabbit-ports); for each, the
 * server CPU per delivered message with the broker's nodes counted, and its
 * ratio to the classic queues'.
 */
import type { QueueType } from '../../shared/src/amqp';
import { startRabbitCluster, type RabbitCluster } from '../../test/clusters/rabbit-cluster';
import { startCluster, type Cluster } from './cluster';
import { writerDrain, type DrainResult } from './drain';
import { sampleLockWaits, summariseLockWaits, type LockWaitSummary } from './lock-waits';
import { measure, pidListeningOn, withDescendants, type ProcUsage, type Tracked } from './procs';
import { total, type Counters } from './metrics';
import { num, type LoadOutcome, type TableRow } from './table';

export interface PartitionOptions {
  partitions: number[];
  partitionRates: number[];
  rabbitPorts: [number, number, number];
  backlog: number;
  perPayload: number;
  body: number;
  stepMs: number;
  quick: boolean;
  instances: number;
  users: number;
  env: Record<string, string>;
}

/** What this part reads of a load step of index.ts. */
export interface PartitionStep extends LoadOutcome {
  delivered: number;
  sent: number;
  usageWhole: Record<string, ProcUsage>;
  /** deltas of the services' own counters over the step */
  counters: Record<string, Counters>;
}

export interface PartitionContext {
  o: PartitionOptions;
  runId: string;
  redisUrl: string;
  amqpUrl: string;
  databaseUrl: string;
  /** node flags of the services (--cpu-prof) */
  profFlags: string[];
  wsNodeFlags: string[];
  /** the local Postgres server (postmaster and every backend: a neighbour's work included), the local broker */
  postgresServer: Tracked;
  localBroker: Tracked;
  say(line: string): void;
  rows: TableRow[];
  results: Record<string, unknown>;
  /** run on failure or at the end of the run, whatever the part reached */
  cleanups: (() => Promise<unknown>)[];
  /**
   * Points index.ts's load machinery at a cluster: its services, the broker's processes
   * (tracked as 'rabbitmq'), the broker to ask for queue depths; connects the load users and
   * returns once they are registered. undefined: back to nothing (users closed).
   */
  useCluster(c: { cluster: Cluster; broker: Tracked; amqpUrl: string; partitions: number; label: string; idleRow: boolean } | undefined): Promise<void>;
  /** one cross-instance step on the cluster in use; the CPU window runs on until its queues are empty */
  runLoad(rate: number, durationMs: number): Promise<PartitionStep>;
  /** the table row of a step, with index.ts's step notes after `note` */
  loadRow(part: string, test: string, r: PartitionStep, note: string): TableRow;
  /** server processes: [process name, short name] */
  serverSide: [string, string][];
  waitQueueEmpty(maxMs: number): Promise<void>;
}

const perRow = (seconds: number | undefined, rows: number) => (seconds === undefined || !rows ? undefined : (seconds * 1e6) / rows);
const us = (v: number | undefined) => (v === undefined ? '?' : v < 10 ? v.toFixed(1) : num(v));
const pctOf = (share: number) => `${(100 * share).toFixed(share < 0.01 && share > 0 ? 2 : 1)}%`;

interface DrainRun {
  partitions: number;
  drain: DrainResult;
  usage: Record<string, ProcUsage>;
  locks: LockWaitSummary;
  /** µs of CPU per row stored */
  cpuPerRow: { persist: number | undefined; persistEach: (number | undefined)[]; postgres: number | undefined; postgresServer: number | undefined; rabbitmq: number | undefined };
}

async function drainWith(ctx: PartitionContext, n: number): Promise<DrainRun> {
  const { o, say } = ctx;
  say(`partitions: writer drain with QUEUE_PARTITIONS=${n}, two SvPersist: starting a cluster`);
  const cluster = await startCluster({
    runId: `${ctx.runId}p${n}`,
    redisUrl: ctx.redisUrl,
    amqpUrl: ctx.amqpUrl,
    databaseUrl: ctx.databaseUrl,
    partitions: n,
    persistCount: 2,
    extraEnv: ctx.o.env,
    wsNodeFlags: ctx.wsNodeFlags,
    persistNodeFlags: ctx.profFlags,
    discoverNodeFlags: ctx.profFlags,
    gateways: 0,
    wsNofile: 1024,
    log: say,
  });
  ctx.cleanups.push(() => cluster.close());
  try {
    const persistTracked = (name: string): Tracked => ({ name, pids: () => cluster.persists.filter((p) => p.name === name && !p.exited).map((p) => p.pid) });
    const names = cluster.persists.map((p) => p.name);
    // SvPersist is stopped first thing in writerDrain: the sampler sees only the backends it opens when started again
    const sampler = await sampleLockWaits(cluster.databaseUrl, { intervalMs: 10, application: 'SvPersist' });
    const backends: Tracked = { name: 'postgres', pids: () => sampler.pids() };
    let win: ReturnType<typeof measure> | undefined;
    let serverWin: ReturnType<typeof measure> | undefined;
    say(`partitions: N=${n}: SvPersist stopped, queueing ${num(o.backlog)} messages split by partition, timing the drain`);
    const drained = writerDrain(
        cluster,
        { amqpUrl: ctx.amqpUrl, runId: `${ctx.runId}p${n}`, messages: o.backlog, perPayload: o.perPayload, bodyChars: o.body, timeoutMs: o.quick ? 120_000 : 300_000, partitions: n },
        () => {
          // CPU from both SvPersist's spawn on (their start-up included)
          win = measure([...names.map(persistTracked), backends, ctx.localBroker]);
          // apart: its processes include the backends above
          serverWin = measure([{ ...ctx.postgresServer, name: 'pg-server' }]);
        },
      );
    // the sampler stops whether the drain finished or not
    const [outcome, samples] = await Promise.all([drained.then((d) => ({ d }), (err: unknown) => ({ err })), drained.then(() => sampler.stop(), () => sampler.stop())]);
    if ('err' in outcome) throw outcome.err;
    const drain = outcome.d;
    const usage = win?.stop() ?? {};
    const serverUsage = serverWin?.stop() ?? {};
    const locks = summariseLockWaits(samples, drain.firstAt, drain.doneAt);
    const rows = drain.messages;
    const persistEach = names.map((k) => perRow(usage[k]?.cpuSeconds, rows));
    const cpuPerRow = {
      persist: persistEach.every((v) => v !== undefined) ? persistEach.reduce<number>((a, b) => a + (b as number), 0) : undefined,
      persistEach,
      postgres: perRow(usage.postgres?.cpuSeconds, rows),
      postgresServer: perRow(serverUsage['pg-server']?.cpuSeconds, rows),
      rabbitmq: perRow(usage.rabbitmq?.cpuSeconds, rows),
    };
    say(
      `partitions: N=${n}: ${num(drain.rowsPerSec)} rows/s over ${drain.drainSeconds.toFixed(1)} s; CPU per row SvPersist ${us(cpuPerRow.persist)} µs, pg backends ${us(cpuPerRow.postgres)} µs; advisory waits in ${pctOf(locks.waitingShare)} of ${locks.samples} samples`,
    );
    return { partitions: n, drain, usage, locks, cpuPerRow };
  } finally {
    await cluster.close();
  }
}

export async function runPartitionDrains(ctx: PartitionContext): Promise<void> {
  const { o } = ctx;
  const runs: DrainRun[] = [];
  ctx.results.partitionDrains = runs;
  for (const n of o.partitions) {
    const r = await drainWith(ctx, n);
    runs.push(r);
    const base = runs.find((x) => x.partitions === 1);
    const ratio = base ? r.drain.rowsPerSec / base.drain.rowsPerSec : undefined;
    const c = r.cpuPerRow;
    const l = r.locks;
    ctx.rows.push({
      part: 'partitions',
      test: `writer drain, ${n} partition${n === 1 ? '' : 's'}, two SvPersist, ${num(o.backlog)}-message backlog`,
      rate: r.drain.rowsPerSec,
      cpu: r.usage,
      note: [
        `rows/s over ${r.drain.drainSeconds.toFixed(1)} s (+${(r.drain.startupMs / 1000).toFixed(1)} s start)${ratio === undefined ? '' : `; × ${ratio.toFixed(2)} of 1 partition`}`,
        `CPU per row: SvPersist ${us(c.persist)} µs (${c.persistEach.map((v, i) => `pers${i + 1} ${us(v)}`).join(', ')}), Postgres backends of SvPersist ${us(c.postgres)} µs (all Postgres processes ${us(c.postgresServer)} µs, neighbours included), RabbitMQ ${us(c.rabbitmq)} µs, from both SvPersist's start on`,
        `advisory lock waits: a writer waited in ${pctOf(l.waitingShare)} of ${num(l.samples)} samples (every ${l.intervalMs.toFixed(0)} ms; ${num(l.busySamples)} with a writer in a statement), writers waiting ${pctOf(l.waitingBackendShare)} of their busy samples`,
        `${num(r.drain.payloads)} AMQP messages (${r.drain.perPartition.map((m) => num(m)).join(' / ')} messages by partition); queue left ${r.drain.queueLeft}`,
        ...(n === 1 ? ['one queue with a single active consumer: one SvPersist writes, the other stands by'] : []),
      ].join('; '),
    });
  }
  const base = runs.find((x) => x.partitions === 1) ?? runs[0];
  if (base) {
    ctx.rows.push({
      part: 'HEADLINE',
      test: `writer drain by partition count (two SvPersist, ${num(o.backlog)} messages)`,
      note: runs
        .map((r) => `${r.partitions}: ${num(r.drain.rowsPerSec)} rows/s (× ${(r.drain.rowsPerSec / base.drain.rowsPerSec).toFixed(2)}), SvPersist ${us(r.cpuPerRow.persist)} + pg ${us(r.cpuPerRow.postgres)} µs/row, advisory waits ${pctOf(r.locks.waitingShare)} of samples`)
        .join('; '),
    });
  }
}

interface QueueConfig {
  key: 'classic' | 'quorum' | 'quorum-3';
  label: string;
  queueType: QueueType;
  threeNodes: boolean;
}

const CONFIGS: QueueConfig[] = [
  { key: 'classic', label: '(a) classic queue, local broker', queueType: 'classic', threeNodes: false },
  { key: 'quorum', label: '(b) quorum queue, local broker (one node)', queueType: 'quorum', threeNodes: false },
  { key: 'quorum-3', label: '(c) quorum queue, three-node RabbitMQ cluster', queueType: 'quorum', threeNodes: true },
];

interface PerMessage {
  /** µs of server CPU per delivered message, in all and by process */
  total: number;
  parts: Record<string, number>;
  /** server wake-ups (voluntary context switches) per delivered message, in all and by process */
  wakes: number;
  wakeParts: Record<string, number>;
  delivered: number;
}

/** Server CPU and wake-ups per delivered message over several steps. */
function perMessage(steps: readonly PartitionStep[], serverSide: [string, string][]): PerMessage {
  const delivered = steps.reduce((n, r) => n + r.delivered, 0);
  const parts: Record<string, number> = {};
  const wakeParts: Record<string, number> = {};
  let total = 0;
  let wakes = 0;
  for (const [k, short] of serverSide) {
    const s = steps.reduce((n, r) => n + (r.usageWhole[k]?.cpuSeconds ?? 0), 0);
    const w = steps.reduce((n, r) => n + (r.usageWhole[k]?.wakes ?? 0), 0);
    parts[short] = delivered ? (s * 1e6) / delivered : 0;
    wakeParts[short] = delivered ? w / delivered : 0;
    total += parts[short];
    wakes += wakeParts[short];
  }
  return { total, parts, wakes, wakeParts, delivered };
}

export async function runQueueTypes(ctx: PartitionContext): Promise<void> {
  const { o, say } = ctx;
  const byConfig: Record<string, unknown> = {};
  ctx.results.queueTypes = byConfig;
  let rabbit: RabbitCluster | undefined;
  const running = new Map<QueueConfig['key'], { cfg: QueueConfig; cluster: Cluster; broker: Tracked; amqpUrl: string; steps: PartitionStep[]; used: boolean }>();
  try {
    for (const cfg of CONFIGS) {
      let amqpUrl = ctx.amqpUrl;
      let broker = ctx.localBroker;
      let amqpUrls: string[] | undefined;
      if (cfg.threeNodes) {
        say(`queue types: starting a three-node RabbitMQ cluster on ports ${o.rabbitPorts.join(', ')} (distribution ports 20000 above)`);
        const t0 = Date.now();
        try {
          rabbit = await startRabbitCluster({ ports: o.rabbitPorts });
        } catch (err) {
          const why = err instanceof Error ? (err.message.split('\n')[0] ?? err.message) : String(err);
          say(`queue types: the three-node cluster did not start: ${why}`);
          ctx.rows.push({ part: 'queues', test: cfg.label, note: `not run: the three-node RabbitMQ cluster did not start (${why})` });
          continue;
        }
        const r = rabbit;
        ctx.cleanups.push(() => r.close());
        say(`queue types: three nodes running after ${((Date.now() - t0) / 1000).toFixed(0)} s`);
        amqpUrls = r.urls;
        amqpUrl = r.urls[0] as string;
        // each node's BEAM (found by its AMQP listener) and its helpers
        const roots = o.rabbitPorts.map((p) => pidListeningOn(p)).filter((p): p is number => p !== undefined);
        if (roots.length < 3) say(`queue types: found the processes of only ${roots.length} of the three nodes: the broker's CPU is undercounted`);
        broker = { name: 'rabbitmq', pids: () => roots.flatMap((p) => withDescendants(p)) };
      }
      say(`queue types: ${cfg.label}: starting a cluster (QUEUE_TYPE=${cfg.queueType}, one partition)`);
      const cluster = await startCluster({
        runId: `${ctx.runId}${cfg.key.replace('-', '')}`,
        redisUrl: ctx.redisUrl,
        amqpUrl,
        ...(amqpUrls ? { amqpUrls } : {}),
        databaseUrl: ctx.databaseUrl,
        queueType: cfg.queueType,
        partitions: 1,
        extraEnv: o.env,
        wsNodeFlags: ctx.wsNodeFlags,
        persistNodeFlags: ctx.profFlags,
        discoverNodeFlags: ctx.profFlags,
        gateways: o.instances,
        wsNofile: o.users + 1000,
        log: say,
      });
      ctx.cleanups.push(() => cluster.close());
      running.set(cfg.key, { cfg, cluster, broker, amqpUrl, steps: [], used: false });
    }
    // The three clusters stand side by side; the steps alternate between them (A B C C B A, then
    // C B A A B C at the next rate), so a drift of the host over the part weighs on all alike.
    const keys = [...running.keys()];
    for (const [i, rate] of o.partitionRates.entries()) {
      const order = i % 2 === 0 ? [...keys, ...[...keys].reverse()] : [...[...keys].reverse(), ...keys];
      say(`queue types: cross steps of ${num(rate)}/s, order ${order.join(' ')}`);
      for (const key of order) {
        const run = running.get(key);
        if (!run) continue;
        const { cfg, cluster } = run;
        await ctx.useCluster({ cluster, broker: run.broker, amqpUrl: run.amqpUrl, partitions: 1, label: cfg.label, idleRow: !run.used });
        if (!run.used) {
          // not reported: the code paths warmed up on this cluster
          await ctx.runLoad(o.partitionRates[0] as number, o.quick ? 1000 : 2000);
          await ctx.waitQueueEmpty(o.quick ? 5000 : 15_000);
          run.used = true;
        }
        const r = await ctx.runLoad(rate, o.stepMs);
        run.steps.push(r);
        ctx.rows.push(ctx.loadRow('queues', `${cfg.label}: cross step ${num(rate)}/s for ${o.stepMs / 1000} s`, r, `QUEUE_TYPE=${cfg.queueType}${cfg.threeNodes ? ', AMQP_URLS of three nodes' : ''}`));
        await ctx.waitQueueEmpty(o.quick ? 5000 : 15_000);
        await ctx.useCluster(undefined);
      }
    }
  } finally {
    await ctx.useCluster(undefined);
    for (const run of running.values()) await run.cluster.close();
    if (rabbit) await rabbit.close();
  }
  const perConfig = new Map<string, PerMessage & { lost: number; delivered: number; msgsPerPublish: number | undefined; p50: number | undefined; p99: number | undefined }>();
  for (const [key, run] of running) {
    const c = perMessage(run.steps, ctx.serverSide);
    const lost = run.steps.reduce((n, r) => n + r.lost, 0);
    const published = run.steps.reduce((n, r) => n + total(r.counters, 'published_messages_total'), 0);
    const publishes = run.steps.reduce((n, r) => n + total(r.counters, 'publish_confirms_total'), 0);
    // the highest rate's steps: the median of their p50s and the worst p99
    const top = run.steps.filter((r) => r.offered === Math.max(...run.steps.map((x) => x.offered)));
    const p50s = top.map((r) => r.deliveryP50 ?? Infinity).sort((x, y) => x - y);
    const p50 = p50s[Math.floor((p50s.length - 1) / 2)];
    const p99 = Math.max(...top.map((r) => r.deliveryP99 ?? Infinity));
    const entry = { ...c, lost, msgsPerPublish: publishes ? published / publishes : undefined, p50: Number.isFinite(p50) ? p50 : undefined, p99: Number.isFinite(p99) ? p99 : undefined };
    perConfig.set(key, entry);
    byConfig[key] = { label: run.cfg.label, ...entry, steps: run.steps.length };
  }
  const a = perConfig.get('classic');
  const line = (key: string) => {
    const c = perConfig.get(key);
    if (!c) return `${key}: not run`;
    const ratio = a && a.total ? ` (× ${(c.total / a.total).toFixed(2)} of classic)` : '';
    const wakeRatio = a && a.wakes ? ` (× ${(c.wakes / a.wakes).toFixed(2)})` : '';
    const at = `${num(o.partitionRates[o.partitionRates.length - 1])}/s delivery p50 ${c.p50?.toFixed(1) ?? '?'} ms, p99 ${c.p99?.toFixed(0) ?? '?'} ms`;
    return `${key} ${num(c.total)} µs/msg${ratio}, of which RabbitMQ ${num(c.parts.rmq)}, Postgres ${num(c.parts.pg)}; ${c.wakes.toFixed(1)} wake-ups/msg${wakeRatio}, RabbitMQ ${(c.wakeParts.rmq ?? 0).toFixed(2)}; ${c.msgsPerPublish?.toFixed(1) ?? '?'} msg/AMQP publish; ${c.lost} lost; at ${at}`;
  };
  const c3 = perConfig.get('quorum-3');
  const goal = a && c3 ? (c3.total / a.total <= 1.5 ? 'met' : 'NOT met') : 'not measured';
  // Postgres does the same work whatever the queue type, and a neighbour's queries land in it
  const noPg = (c: PerMessage | undefined) => (c ? c.total - (c.parts.pg ?? 0) : undefined);
  const ratioNoPg = (key: string) => {
    const x = noPg(perConfig.get(key));
    const base = noPg(a);
    return x !== undefined && base ? (x / base).toFixed(2) : '?';
  };
  ctx.rows.push({
    part: 'HEADLINE',
    test: `message path: server CPU per message, broker included, classic vs quorum vs quorum on three nodes (cross steps ${o.partitionRates.map((r) => num(r)).join(', ')}/s, alternated)`,
    note: `${['classic', 'quorum', 'quorum-3'].map(line).join('; ')}; goal (c)/(a) ≤ 1.5: ${goal}; without Postgres (b)/(a) ${ratioNoPg('quorum')}, (c)/(a) ${ratioNoPg('quorum-3')}. Server = the gateways, SvDiscover, SvPersist, Redis, Postgres (the whole server: a neighbour's queries count too) and the broker's nodes (the local broker: every queue on it, a neighbour's too); CPU per message over two steps of each per rate, each counted until the queue was empty; fewer messages per AMQP publish cost more per message (a starved host batches more); on this host the three nodes share two cores with everything else`,
  });
}
