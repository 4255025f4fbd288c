/**
 * Presence fan-out rows of the benchmark (`--only presence`), on a private
 * cluster of its own with three gateways: W watcher connections on ws-1, T
 * target users on ws-2, each watcher watching P of the targets, spread so
 * that every target is watched by W × P / T watchers (watcher j watches
 * targets (j × P) mod T onwards, wrapping). Then, while the load processes
 * record per (watcher, user) pair when the state waited for first arrived:
 *
 * 1. ws-2 is killed (SIGKILL: no goodbye, its claims lapse with its lease):
 *    the time from the kill until each watcher saw `online: false`, against
 *    the goal LEASE_MS + 1 s;
 * 2. the targets connect again, on ws-3: the time until every watcher saw
 *    `online: true` (counted from the first connect);
 * 3. ws-3 is drained (SIGTERM: connections closed, claims dropped with a
 *    goodbye): the time until every watcher saw `online: false`, against the
 *    goal of 2 s.
 *
 * Each phase reports p50/p99/max over the pairs, the pairs never told, the
 * presence frames per watcher (the gateway batches changes, at most one frame
 * per flush), and the CPU of every process while it ran. LEASE_MS and
 * PRESENCE_RECONCILE_MS are set explicitly (the product defaults unless given
 * with --env). It measures and prints; nothing here passes or fails a run.
 */
import { cpus } from 'node:os';
import type { Child } from './children';
import { startCluster, type Cluster } from './cluster';
import { Histogram, quantile } from './histogram';
import type { PresenceCollectResult, PresenceStatus, PresenceWatchResult } from './load-worker';
import { deltaAll, scrapeServices, total, type Counters } from './metrics';
import { measure, type ProcUsage, type Tracked } from './procs';
import type { RoomContext } from './rooms';
import { num, type TableRow } from './table';

/** SvDiscover's LEASE_MS and the gateways' PRESENCE_RECONCILE_MS when --env does not set them (the product defaults) */
export const DEFAULT_LEASE_MS = 10_000;
export const DEFAULT_RECONCILE_MS = 1000;
/** goal after a drained gateway: every watcher told within this */
export const DRAIN_GOAL_MS = 2000;

export interface PresenceOptions {
  quick: boolean;
  /** watcher connections, and target users */
  presenceUsers: number;
  /** targets each watcher watches */
  presenceWatch: number;
  env: Record<string, string>;
  wsNodeFlags: string[];
}

export interface PresenceContext extends Pick<RoomContext, 'runId' | 'redisUrl' | 'workers' | 'allConnect' | 'allClose' | 'childTracked' | 'say' | 'rows' | 'results'> {
  o: PresenceOptions;
  amqpUrl: string;
  databaseUrl: string;
  /** node flags of every service (--cpu-prof) */
  profFlags: string[];
  /** what is measured beside the cluster's processes: load processes, this one, Redis, RabbitMQ, Postgres */
  others(): Tracked[];
  /** best-effort removals run when the run ends early */
  cleanups: (() => Promise<unknown>)[];
}

/** the load processes' PresenceCollectResults, merged */
interface Phase extends PresenceCollectResult {
  /** epoch ms the delays count from */
  fromEpoch: number;
  p50?: number | undefined;
  p99?: number | undefined;
  max?: number | undefined;
  watchers: number;
  /** ms the phase was watched for */
  watchedMs: number;
  usage: Record<string, ProcUsage>;
  counters: Record<string, Counters>;
  crashed: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const epochNow = () => performance.timeOrigin + performance.now();
const GROUP_WATCH = 'pwatch';
const GROUP_TARGET = 'ptarget';

export async function runPresence(ctx: PresenceContext): Promise<void> {
  const { o, workers, say } = ctx;
  const W = workers.length;
  const N = o.presenceUsers;
  const P = Math.min(o.presenceWatch, N);
  const leaseMs = Number(o.env.LEASE_MS ?? DEFAULT_LEASE_MS);
  const reconcileMs = Number(o.env.PRESENCE_RECONCILE_MS ?? DEFAULT_RECONCILE_MS);
  const killGoalMs = leaseMs + 1000;
  const results: Record<string, unknown> = { watchers: N, targets: N, perWatcher: P, watchersPerTarget: P, leaseMs, reconcileMs };
  ctx.results.presence = results;

  say(`presence: a private cluster of 3 gateways (LEASE_MS=${leaseMs}, PRESENCE_RECONCILE_MS=${reconcileMs}); ${N} watchers on ws-1, each watching ${P} of ${N} targets on ws-2`);
  const pc: Cluster = await startCluster({
    runId: `${ctx.runId}p`,
    redisUrl: ctx.redisUrl,
    amqpUrl: ctx.amqpUrl,
    databaseUrl: ctx.databaseUrl,
    extraEnv: { LEASE_MS: String(leaseMs), PRESENCE_RECONCILE_MS: String(reconcileMs), ...o.env },
    wsNodeFlags: [...ctx.profFlags, ...o.wsNodeFlags],
    persistNodeFlags: ctx.profFlags,
    discoverNodeFlags: ctx.profFlags,
    gateways: 3,
    wsNofile: N + 1000,
    log: say,
  });
  ctx.cleanups.push(() => pc.close());
  const [, wsB, wsC] = pc.ws as [Child, Child, Child];
  const [urlA, urlB, urlC] = pc.wsUrls as [string, string, string];
  const tracked = (): Tracked[] => [...pc.ws.map((c) => ctx.childTracked(c)), ctx.childTracked(pc.discover), ctx.childTracked(pc.persist), ...ctx.others()];
  const scrape = () => scrapeServices(pc.httpUrls(), pc.internalToken);
  const target = (j: number) => `t${ctx.runId}i${j}`;
  const targets = Array.from({ length: N }, (_, j) => target(j));
  /** user j: on load process j mod W */
  const spread = (user: (j: number) => string, url: string) => (w: number) => {
    const out: { user: string; url: string }[] = [];
    for (let j = w; j < N; j += W) out.push({ user: user(j), url });
    return out;
  };
  const call = <T>(cmd: string, args: (w: number) => unknown, timeoutMs = 60_000) => Promise.all(workers.map((w, i) => w.rpc.call<T>(cmd, args(i), timeoutMs)));
  const status = async () => (await call<PresenceStatus>('presenceStatus', () => ({ group: GROUP_WATCH }))).reduce((a, s) => ({ pairs: a.pairs + s.pairs, there: a.there + s.there }), { pairs: 0, there: 0 });

  /** Arms the watchers, runs `act` (which returns the epoch the delays count from), then waits until every pair is there or `boundMs` passed. */
  async function phase(expect: 'online' | 'offline', boundMs: number, act: () => Promise<number>): Promise<Phase> {
    await call('presenceArm', () => ({ group: GROUP_WATCH, expect }));
    const before = await scrape();
    const win = measure(tracked());
    const t0 = performance.now();
    const fromEpoch = await act();
    const end = fromEpoch + boundMs;
    for (;;) {
      const s = await status();
      if (s.there === s.pairs || epochNow() >= end) break;
      await sleep(100);
    }
    // frames of the last flush still on their way
    await sleep(500);
    const watchedMs = performance.now() - t0;
    const got = await call<PresenceCollectResult>('presenceCollect', () => ({ group: GROUP_WATCH, fromEpoch }));
    const usage = win.stop();
    const counters = deltaAll(before, await scrape());
    const sum = (f: (r: PresenceCollectResult) => number) => got.reduce((n, r) => n + f(r), 0);
    const delay = Histogram.merge(got.map((r) => r.delay));
    const closed: Record<string, number> = {};
    for (const r of got) for (const [c, n] of Object.entries(r.closed)) closed[c] = (closed[c] ?? 0) + n;
    return {
      fromEpoch,
      watchers: N,
      pairs: sum((r) => r.pairs),
      reached: sum((r) => r.reached),
      notThere: sum((r) => r.notThere),
      alreadyThere: sum((r) => r.alreadyThere),
      flapped: sum((r) => r.flapped),
      delay,
      p50: quantile(delay, 0.5),
      p99: quantile(delay, 0.99),
      max: delay.n ? delay.max : undefined,
      frames: sum((r) => r.frames),
      changes: sum((r) => r.changes),
      framesMin: Math.min(...got.map((r) => r.framesMin)),
      framesMax: Math.max(...got.map((r) => r.framesMax)),
      closed,
      loopDelayP99Ms: Math.max(...got.map((r) => r.loopDelayP99Ms)),
      watchedMs,
      usage,
      counters,
      crashed: pc.crashed().map((c) => c.name),
    };
  }

  const hostBusy = (usage: Record<string, ProcUsage>) => `host busy ${Math.round(Object.values(usage).reduce((n, u) => n + u.cpu, 0))}% of ${cpus().length * 100}%`;
  /** what ws-1 (the watchers' gateway) and SvDiscover did over a window */
  const serverWork = (counters: Record<string, Counters>, seconds: number) => {
    const a = { 'ws-1': counters['ws-1'] ?? {} };
    const checked = total(a, 'presence_checks_total');
    const asked = total({ discover: counters.discover ?? {} }, 'http_requests_total', 'route="/internal/presence"');
    return `ws-1 asked SvDiscover about ${num(checked / seconds)} watched users/s in ${num(asked / seconds, 1)} requests/s`;
  };
  const phaseNote = (p: Phase, what: string, goal: string, met: boolean) => {
    const bits = [
      `${what}; ${num(p.reached)} of ${num(p.pairs)} pairs told${p.notThere ? `, ${num(p.notThere)} NOT told within ${num(p.watchedMs / 1000, 1)} s (lost column)` : ''}; ${goal}: ${met ? 'met' : 'NOT met'}`,
      `presence frames per watcher ${num(p.framesMin)}-${num(p.framesMax)} (mean ${(p.frames / p.watchers).toFixed(2)}, ${p.frames ? (p.changes / p.frames).toFixed(0) : 0} changes per frame)`,
      serverWork(p.counters, p.watchedMs / 1000),
      `${hostBusy(p.usage)} over the ${num(p.watchedMs / 1000, 1)} s watched`,
    ];
    if (p.alreadyThere) bits.push(`${num(p.alreadyThere)} pairs already there when armed`);
    if (p.flapped) bits.push(`${num(p.flapped)} pairs flipped back`);
    if (Object.keys(p.closed).length) bits.push(`closed ${Object.entries(p.closed).map(([k, v]) => `${k}×${v}`).join(', ')}`);
    if (p.crashed.length) bits.push(`CRASHED: ${p.crashed.join(', ')}`);
    if (p.loopDelayP99Ms > 20) bits.push(`load loop lag p99 ${p.loopDelayP99Ms.toFixed(0)} ms`);
    return bits.join('; ');
  };
  const phaseRow = (part: string, test: string, p: Phase, note: string): TableRow => ({ part, test, lost: p.notThere, delivery: [p.p50, p.p99, p.max], cpu: p.usage, note });
  const say3 = (what: string, p: Phase) => say(`presence ${what}: ${num(p.reached)}/${num(p.pairs)} pairs told, p50/p99/max ${p.p50?.toFixed(0)}/${p.p99?.toFixed(0)}/${p.max?.toFixed(0)} ms, ${num(p.notThere)} not told, ${(p.frames / p.watchers).toFixed(2)} frames per watcher`);

  try {
    // ---- targets on ws-2, watchers on ws-1 ----------------------------------
    const t = await ctx.allConnect(GROUP_TARGET, 'simplechat', spread(target, urlB), pc.jwtSecret, 50);
    if (t.failed) throw new Error(`presence targets: ${t.failed} of ${t.ok + t.failed} failed to register (${t.firstError})`);
    const w = await ctx.allConnect(GROUP_WATCH, 'simplechat', spread((j) => `w${ctx.runId}i${j}`, urlA), pc.jwtSecret, 50);
    if (w.failed) throw new Error(`presence watchers: ${w.failed} of ${w.ok + w.failed} failed to register (${w.firstError})`);
    const win = measure(tracked());
    const watched = await call<PresenceWatchResult>(
      'presenceWatch',
      (i) => ({
        group: GROUP_WATCH,
        targets,
        // watcher j (on load process j mod W) watches from (j × P) mod N on
        starts: Array.from({ length: Math.ceil((N - i) / W) }, (_, k) => ((i + k * W) * P) % N),
        perWatcher: P,
        perFrame: 200,
        concurrency: 50,
        timeoutMs: 15_000,
      }),
      120_000,
    );
    const watchUsage = win.stop();
    const wsum = (f: (r: PresenceWatchResult) => number) => watched.reduce((n, r) => n + f(r), 0);
    const answer = Histogram.merge(watched.map((r) => r.answer));
    const errors: Record<string, number> = {};
    for (const r of watched) for (const [c, n] of Object.entries(r.errors)) errors[c] = (errors[c] ?? 0) + n;
    const pairs = wsum((r) => r.pairs);
    const online = wsum((r) => r.online);
    const watchMs = Math.max(...watched.map((r) => r.ms));
    results.watch = { pairs, online, answered: wsum((r) => r.answered), errors, errorSamples: Object.assign({}, ...watched.map((r) => r.errorSamples)) as Record<string, string>, answer, ms: watchMs, usage: watchUsage };
    say(`presence: ${num(pairs)} pairs watched in ${(watchMs / 1000).toFixed(1)} s, ${num(online)} online in the answers`);
    ctx.rows.push({
      part: 'presence',
      test: `presence.watch: ${num(N)} watchers on ws-1 × ${P} of ${num(N)} targets on ws-2 (${num(pairs)} pairs)`,
      rate: wsum((r) => r.answered) / (watchMs / 1000),
      ack: [quantile(answer, 0.5), quantile(answer, 0.99)],
      cpu: watchUsage,
      note: `watch frames answered/s (≤ 200 users per frame; ack column: ms from a frame to its answer); every target watched by ${P} watchers, ${num(N)} distinct users watched on ws-1; ${num(online)} of ${num(pairs)} pairs online in the answers${Object.keys(errors).length ? `; errors ${Object.entries(errors).map(([k, v]) => `${k} ${v}`).join(', ')}` : ''}`,
    });
    if (online < pairs) {
      // registered before the watch, so they are online; wait for the pushes if an answer was early
      const s = await phase('online', 10_000, async () => epochNow());
      if (s.notThere) throw new Error(`presence: ${s.notThere} of ${s.pairs} pairs not online 10 s after the watch`);
    }

    // ---- standing still: the reconciliation's cost --------------------------
    const steadyMs = o.quick ? 2000 : 5000;
    {
      const before = await scrape();
      const sw = measure(tracked());
      await sleep(steadyMs);
      const usage = sw.stop();
      const counters = deltaAll(before, await scrape());
      results.steady = { ms: steadyMs, usage, counters };
      ctx.rows.push({
        part: 'presence',
        test: `watching, nothing changes (${steadyMs / 1000} s)`,
        cpu: usage,
        note: `every watched user asked again each PRESENCE_RECONCILE_MS (${num(reconcileMs)} ms): ${serverWork(counters, steadyMs / 1000)}; ${hostBusy(usage)}`,
      });
    }

    // ---- 1. ws-2 killed ------------------------------------------------------
    say(`presence: SIGKILL ws-2 (${num(N)} targets); waiting up to LEASE_MS + 6 s for every watcher to see them offline`);
    const killed = await phase('offline', leaseMs + 6000, async () => {
      const at = epochNow();
      await pc.killWs(wsB);
      return at;
    });
    await ctx.allClose(GROUP_TARGET);
    say3('after SIGKILL', killed);
    results.kill = killed;
    const killMet = killed.notThere === 0 && (killed.max ?? Infinity) <= killGoalMs;
    ctx.rows.push(
      phaseRow(
        'HEADLINE',
        `presence after a gateway crash: SIGKILL ws-2 → ${num(killed.pairs)} watcher pairs see online:false (LEASE_MS ${num(leaseMs)})`,
        killed,
        phaseNote(killed, `delivery column: ms from the SIGKILL to each (watcher, user) pair's online:false, ${num(N)} watchers on ws-1`, `goal every pair by LEASE_MS + 1 s = ${num(killGoalMs)} ms`, killMet),
      ),
    );

    // ---- 2. the targets again, on ws-3 ---------------------------------------
    say(`presence: the ${num(N)} targets connect to ws-3`);
    let connectMs = 0;
    const back = await phase('online', 30_000, async () => {
      const at = epochNow();
      const c = await ctx.allConnect(GROUP_TARGET, 'simplechat', spread(target, urlC), pc.jwtSecret, 50);
      if (c.failed) throw new Error(`presence targets on ws-3: ${c.failed} of ${c.ok + c.failed} failed to register (${c.firstError})`);
      connectMs = c.ms;
      return at;
    });
    say3('after reconnecting on ws-3', back);
    results.online = { ...back, connectMs };
    ctx.rows.push(
      phaseRow(
        'presence',
        `targets reconnect on ws-3 → watchers see online:true`,
        back,
        phaseNote(back, `delivery column: ms from the first target's connect to each pair's online:true; connecting and registering all ${num(N)} took ${num(connectMs / 1000, 1)} s`, 'goal every pair told', back.notThere === 0),
      ),
    );

    // ---- 3. ws-3 drained ----------------------------------------------------
    say(`presence: SIGTERM ws-3 (drain: connections closed, claims dropped with a goodbye)`);
    let stopping: Promise<void> | undefined;
    const drained = await phase('offline', leaseMs + 6000, async () => {
      const at = epochNow();
      stopping = pc.stopWs(wsC);
      return at;
    });
    await stopping;
    await ctx.allClose(GROUP_TARGET);
    say3('after SIGTERM', drained);
    results.drain = drained;
    const drainMet = drained.notThere === 0 && (drained.max ?? Infinity) < DRAIN_GOAL_MS;
    ctx.rows.push(
      phaseRow(
        'HEADLINE',
        `presence after a drained gateway: SIGTERM ws-3 → ${num(drained.pairs)} watcher pairs see online:false`,
        drained,
        phaseNote(drained, `delivery column: ms from the SIGTERM to each pair's online:false`, `goal every pair within ${num(DRAIN_GOAL_MS)} ms`, drainMet),
      ),
    );
  } finally {
    await ctx.allClose(GROUP_WATCH).catch(() => undefined);
    await ctx.allClose(GROUP_TARGET).catch(() => undefined);
    await pc.close();
  }
}
