/**
 * Room rows of the benchmark (`--only rooms`): one member sends into a room
 * of M members spread over the gateways (member j on load process j mod W and
 * gateway ⌊j / W⌋ mod N), at stepped rates chosen by deliveries/s (rate ×
 * (M - 1)); every other member connection must receive every acked message.
 * The same members, load processes and steps then run against Socket.IO with
 * its Redis adapter on N nodes (members `socket.join(room)`, the server
 * `socket.to(room).emit(...)`). For each engine and room the highest step
 * that passed is held (after a warm-up), and the headline is the deliveries/s
 * held with 0 lost and delivery p99 < ROOM_P99_MS, side by side, with the ratio.
 */
import { cpus } from 'node:os';
import { request } from 'undici';
import type { Child } from './children';
import type { Cluster } from './cluster';
import { Histogram, quantile } from './histogram';
import { SETTLE_MS, type ConnectResult, type RoomCollectResult, type RoomSendResult } from './load-worker';
import { deltaAll, total, type Counters } from './metrics';
import { measure, type ProcUsage, type Tracked } from './procs';
import type { RpcClient } from './rpc';
import { errorCount, num, outcomeNotes, outcomeRow, type TableRow } from './table';

/** delivery p99 a held room rate must stay under */
export const ROOM_P99_MS = 100;

export interface RoomOptions {
  instances: number;
  workers: number;
  body: number;
  quick: boolean;
  stepMs: number;
  holdMs: number;
  warmupMs: number;
  drainMs: number;
  /** members per room, one room after the other */
  roomSizes: number[];
  /** steps, as deliveries/s aimed at; the send rate is deliveries / members (2 significant digits) */
  roomDeliveries: number[];
}

export interface RoomContext {
  o: RoomOptions;
  runId: string;
  redisUrl: string;
  cluster: Cluster;
  workers: { child: Child; rpc: RpcClient }[];
  allConnect(group: string, kind: 'simplechat' | 'socketio', targets: (w: number) => { user: string; url: string; room?: string }[], jwtSecret: string | undefined, concurrency: number): Promise<ConnectResult & { firstError?: string | undefined }>;
  allClose(group: string): Promise<unknown>;
  startHelper(script: string, name: string, args: string[], nofile: number): Promise<{ child: Child; port: number }>;
  childTracked(c: Child): Tracked;
  /** every process measured now */
  tracked(): Tracked[];
  setSioTracked(t: Tracked[]): void;
  scrapeAll(): Promise<Record<string, Counters>>;
  waitQueueEmpty(maxMs: number): Promise<void>;
  warnCounts(): Record<string, number>;
  nextStep(): number;
  say(line: string): void;
  rows: TableRow[];
  results: Record<string, unknown>;
}

export interface RoomRow {
  kind: 'step' | 'hold' | 'warmup';
  engine: 'simplechat' | 'socketio';
  members: number;
  offered: number;
  seconds: number;
  planned: number;
  sent: number;
  sentPerSec: number;
  acked: number;
  ackedPerSec: number;
  /** acked × receiving member connections */
  expected: number;
  delivered: number;
  deliveredPerSec: number;
  lost: number;
  /** receiving member connections that got none of the acked messages */
  silent: number;
  duplicated: number;
  echoed: number;
  unacked: number;
  noAnswer: number;
  errors: Record<string, number>;
  errorSamples: Record<string, string>;
  closed: Record<string, number>;
  hints: number;
  ackP50?: number | undefined;
  ackP99?: number | undefined;
  deliveryP50?: number | undefined;
  deliveryP99?: number | undefined;
  deliveryMax?: number | undefined;
  deliverySettledP99?: number | undefined;
  loadLoopDelayP99Ms: number;
  slowBySecond: number[];
  usage: Record<string, ProcUsage>;
  usageWhole: Record<string, ProcUsage>;
  counters: Record<string, Counters>;
  warnings: Record<string, number>;
  crashed: string[];
}

/** msg/s of a step: deliveries/s over members, 2 significant digits */
export function roomRate(deliveries: number, members: number): number {
  const r = deliveries / members;
  if (r < 1) return 1;
  const p = 10 ** Math.max(0, Math.floor(Math.log10(r)) - 1);
  return Math.round(r / p) * p;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const errorsOf = errorCount;
const clean = (r: RoomRow) => r.lost === 0 && r.noAnswer === 0 && errorsOf(r) === 0 && r.crashed.length === 0 && Object.keys(r.closed).length === 0 && r.delivered === r.expected;
const passes = (r: RoomRow, p99Ms: number) => clean(r) && r.sentPerSec >= 0.97 * r.offered && (r.deliveryP99 ?? Infinity) < p99Ms;
const engineName = (e: RoomRow['engine']) => (e === 'simplechat' ? 'SimpleChat' : 'Socket.IO');

export async function runRooms(ctx: RoomContext): Promise<void> {
  const { o, cluster, workers, say } = ctx;
  const roomRows: RoomRow[] = [];
  ctx.results.rooms = roomRows;
  const headlines: TableRow[] = [];
  const W = workers.length;
  const N = o.instances;
  const serverSide = (engine: RoomRow['engine']): [string, string][] =>
    engine === 'simplechat'
      ? [...Array.from({ length: N }, (_, i): [string, string] => [`ws-${i + 1}`, `ws${i + 1}`]), ['discover', 'disc'], ['persist', 'pers'], ['redis', 'redis'], ['rabbitmq', 'rmq'], ['postgres', 'pg']]
      : [...Array.from({ length: N }, (_, i): [string, string] => [`sio-${i + 1}`, `sio${i + 1}`]), ['redis', 'redis']];

  /** member j: on load process j mod W, gateway (or node) ⌊j / W⌋ mod N; member 0 (worker 0, connection 0) sends */
  const layout = (members: number, urls: string[], user: (j: number) => string, room?: string) => (w: number) => {
    const out: { user: string; url: string; room?: string }[] = [];
    for (let j = w; j < members; j += W) out.push({ user: user(j), url: urls[Math.floor(j / W) % N] as string, ...(room ? { room } : {}) });
    return out;
  };

  async function step(engine: RoomRow['engine'], kind: RoomRow['kind'], members: number, room: string, rate: number, durationMs: number): Promise<RoomRow> {
    const stepNo = ctx.nextStep();
    const planned = Math.floor((rate * durationMs) / 1000);
    const warnBefore = ctx.warnCounts();
    const countersBefore = engine === 'simplechat' ? await ctx.scrapeAll() : {};
    await Promise.all(
      workers.map((w, i) => w.rpc.call('roomListen', { group: 'room', step: stepNo, total: planned, senderIndex: i === 0 ? 0 : -1, settleSeq: Math.floor((rate * SETTLE_MS) / 1000) }, 30_000)),
    );
    const win = measure(ctx.tracked());
    const whole = measure(ctx.tracked(), 1000);
    let usage: Record<string, ProcUsage> | undefined;
    const cut = setTimeout(() => (usage = win.stop()), durationMs + 1000);
    const sender = workers[0] as (typeof workers)[number];
    const send = await sender.rpc.call<RoomSendResult>('roomSend', { group: 'room', room, ratePerSec: rate, durationMs, bodyChars: o.body, ackWaitMs: o.drainMs }, durationMs + o.drainMs + 60_000);
    const got = await Promise.all(workers.map((w) => w.rpc.call<RoomCollectResult>('roomCollect', { group: 'room', ackedMap: send.ackedMap, waitMs: o.drainMs }, o.drainMs + 60_000)));
    clearTimeout(cut);
    usage ??= win.stop();
    const usageWhole = whole.stop();
    const countersAfter = engine === 'simplechat' ? await ctx.scrapeAll() : {};
    const counters = deltaAll(countersBefore, countersAfter);
    const sum = (f: (r: RoomCollectResult) => number) => got.reduce((n, r) => n + f(r), 0);
    const del = Histogram.merge(got.map((r) => r.delivery));
    const settled = Histogram.merge(got.map((r) => r.deliverySettled));
    const closed: Record<string, number> = {};
    for (const r of got) for (const [c, n] of Object.entries(r.closed)) closed[c] = (closed[c] ?? 0) + n;
    const lastDelivery = Math.max(...got.map((r) => r.lastDeliveryEpoch));
    const seconds = send.sendMs / 1000;
    const warnAfter = ctx.warnCounts();
    const row: RoomRow = {
      kind,
      engine,
      members,
      offered: rate,
      seconds,
      planned,
      sent: send.sent,
      sentPerSec: send.sent / seconds,
      acked: send.acked,
      ackedPerSec: send.acked / (send.lastAckMs / 1000 || 1),
      expected: sum((r) => r.expected),
      delivered: sum((r) => r.delivered),
      deliveredPerSec: sum((r) => r.delivered) / (lastDelivery > send.startEpoch ? (lastDelivery - send.startEpoch) / 1000 : 1),
      lost: sum((r) => r.lost),
      silent: sum((r) => r.silent),
      duplicated: sum((r) => r.duplicated),
      echoed: sum((r) => r.echoed),
      unacked: sum((r) => r.unacked),
      noAnswer: send.noAnswer,
      errors: send.errors,
      errorSamples: send.errorSamples,
      closed,
      hints: sum((r) => r.hints),
      ...(send.ack.n ? { ackP50: quantile(send.ack, 0.5), ackP99: quantile(send.ack, 0.99) } : {}),
      ...(del.n ? { deliveryP50: quantile(del, 0.5), deliveryP99: quantile(del, 0.99), deliveryMax: del.max } : {}),
      ...(settled.n ? { deliverySettledP99: quantile(settled, 0.99) } : {}),
      loadLoopDelayP99Ms: Math.max(send.loopDelayP99Ms, ...got.map((r) => r.loopDelayP99Ms)),
      slowBySecond: got.reduce<number[]>((acc, r) => {
        r.slowBySecond.forEach((n, i) => (acc[i] = (acc[i] ?? 0) + n));
        return acc;
      }, []),
      usage,
      usageWhole,
      counters,
      warnings: Object.fromEntries(Object.entries(warnAfter).filter(([k, v]) => v > (warnBefore[k] ?? 0)).map(([k, v]) => [k, v - (warnBefore[k] ?? 0)])),
      crashed: cluster.crashed().map((c) => c.name),
    };
    roomRows.push(row);
    say(
      `${kind} ${engineName(engine)} room ${members} ${num(rate)} msg/s: sent ${num(row.sentPerSec)}/s acked ${num(row.ackedPerSec)}/s delivered ${num(row.deliveredPerSec)}/s (${num(row.delivered)} of ${num(row.expected)}) lost ${row.lost} silent ${row.silent} dup ${row.duplicated} unanswered ${row.noAnswer} errors ${errorsOf(row)}; delivery p50/p99/max ${row.deliveryP50?.toFixed(1)}/${row.deliveryP99?.toFixed(1)}/${row.deliveryMax?.toFixed(0)} ms`,
    );
    return row;
  }

  /** µs of CPU per delivery of each process (whole step, drain included) */
  const perDelivery = (r: RoomRow) => {
    const parts: Record<string, number> = {};
    let server = 0;
    if (!r.delivered) return undefined;
    for (const [k, short] of serverSide(r.engine)) {
      const u = r.usageWhole[k];
      if (!u) continue;
      parts[short] = (u.cpuSeconds * 1e6) / r.delivered;
      server += parts[short];
    }
    const load = workers.reduce((n, w) => n + (r.usageWhole[w.child.name]?.cpuSeconds ?? 0), 0);
    return { server, parts, load: (load * 1e6) / r.delivered };
  };

  const note = (r: RoomRow) => {
    const bits: string[] = [];
    const hostBusy = Object.values(r.usage).reduce((n, u) => n + u.cpu, 0);
    bits.push(`${num(r.offered * (r.members - 1))} deliveries/s offered; host busy ${Math.round(hostBusy)}% of ${cpus().length * 100}%`);
    const per = perDelivery(r);
    if (per) bits.push(`server CPU ${per.server.toFixed(1)} µs/delivery (${Object.entries(per.parts).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(' ')}), load ${per.load.toFixed(1)}`);
    if (r.engine === 'simplechat' && r.acked && Object.keys(r.counters).length) {
      const frames = total(r.counters, 'forward_frames_total');
      const batches = total(r.counters, 'forwards_total');
      const looked = total(r.counters, 'discovery_lookups_total');
      const hits = total(r.counters, 'discovery_cache_hits_total');
      const asked = total(r.counters, 'http_requests_total', 'route="/internal/lookup"');
      bits.push(`per message: ${(frames / r.acked).toFixed(2)} forward frames in ${(batches / r.acked).toFixed(2)} batches; ${(looked / r.acked).toFixed(0)} users looked up (${((looked - hits) / r.acked).toFixed(2)} cache misses), ${(asked / r.acked).toFixed(3)} SvDiscover lookups`);
    }
    if (r.sentPerSec < 0.97 * r.offered) bits.push(`client sent only ${num(r.sentPerSec, 1)}/s`);
    if (r.silent) bits.push(`${r.silent} member connections got nothing`);
    if (r.delivered !== r.expected && !r.lost) bits.push(`${num(r.delivered)} of ${num(r.expected)} deliveries`);
    if (r.echoed) bits.push(`${r.echoed} echoed to the sender`);
    bits.push(...outcomeNotes(r));
    return bits.join('; ');
  };
  const tableRow = (part: string, test: string, r: RoomRow, extra?: string): TableRow => outcomeRow(part, test, r, [extra, note(r)].filter(Boolean).join('; '));

  /** steps, then the highest passing step held; returns the row held */
  async function stepsAndHold(engine: RoomRow['engine'], members: number, room: string, part: string): Promise<{ held?: RoomRow; best?: RoomRow }> {
    const rates = [...new Set(o.roomDeliveries.map((d) => roomRate(d, members)))].sort((a, b) => a - b);
    say(`${engineName(engine)} room of ${members}: steps ${rates.map((r) => `${num(r)} msg/s`).join(', ')} (${o.stepMs / 1000} s each)`);
    // Not reported: the room's first messages fill the caches (membership, lookups, peer links, adapter subscriptions).
    await step(engine, 'warmup', members, room, rates[0] as number, o.quick ? 1000 : 2000);
    if (engine === 'simplechat') await ctx.waitQueueEmpty(5000);
    const stepped: RoomRow[] = [];
    for (const rate of rates) {
      const r = await step(engine, 'step', members, room, rate, o.stepMs);
      stepped.push(r);
      ctx.rows.push(tableRow(part, `step ${num(rate)} msg/s × ${members - 1} for ${o.stepMs / 1000} s`, r));
      if ((r.deliveryP99 ?? Infinity) > 1000 || !clean(r)) {
        say(`${engineName(engine)} room ${members}: stopping the steps (p99 over 1 s, a loss, an error or a crash)`);
        break;
      }
      if (engine === 'simplechat') await ctx.waitQueueEmpty(o.quick ? 3000 : 15_000);
      else await sleep(500);
    }
    // A hold starts after a warm-up at its rate: a step is a candidate when it passed past its first second.
    const candidateP99 = (s: RoomRow) => (o.warmupMs > 0 ? Math.min(s.deliveryP99 ?? Infinity, s.deliverySettledP99 ?? Infinity) : s.deliveryP99);
    const candidates = stepped.filter((s) => passes({ ...s, deliveryP99: candidateP99(s) }, ROOM_P99_MS)).map((s) => s.offered).sort((a, b) => b - a);
    const warmed = o.warmupMs > 0 ? ` after ${o.warmupMs / 1000} s at that rate` : '';
    const holdAt = async (rate: number): Promise<RoomRow | undefined> => {
      say(`hold ${engineName(engine)} room ${members} at ${num(rate)} msg/s for ${o.holdMs / 1000} s${warmed} (needs 0 lost and delivery p99 < ${ROOM_P99_MS} ms)`);
      if (o.warmupMs > 0) await step(engine, 'warmup', members, room, rate, o.warmupMs);
      const r = await step(engine, 'hold', members, room, rate, o.holdMs);
      if (engine === 'simplechat') await ctx.waitQueueEmpty(o.quick ? 5000 : 30_000);
      if (passes(r, ROOM_P99_MS)) return r;
      ctx.rows.push(tableRow(part, `hold ${num(rate)} msg/s for ${o.holdMs / 1000} s${warmed}: not held`, r));
      return undefined;
    };
    let held: RoomRow | undefined;
    for (const rate of candidates.slice(0, o.quick ? 1 : 2)) {
      held = await holdAt(rate);
      if (held) break;
    }
    // Halve the gap to the next step up once, when it is more than a tenth of the rate held.
    const above = held ? Math.min(...stepped.map((s) => s.offered).filter((rate) => rate > (held as RoomRow).offered)) : Infinity;
    if (held && !o.quick && Number.isFinite(above)) {
      const mid = roomRate(((held.offered + above) / 2) * members, members);
      if (mid - held.offered > held.offered / 10 && mid < above) {
        const r = await holdAt(mid);
        if (r) held = r;
      }
    }
    const best = stepped.filter((s) => passes(s, 1000)).sort((a, b) => b.offered - a.offered)[0];
    return { ...(held ? { held } : {}), ...(best ? { best } : {}) };
  }

  const base = (cluster.httpUrls()['ws-1'] ?? '').replace(/\/$/, '');
  const api = async <T>(method: 'POST', path: string, body: unknown): Promise<T> => {
    const res = await request(`${base}/api/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${cluster.serverApiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
    const text = await res.body.text();
    if (res.statusCode >= 300) throw new Error(`Server API ${method} ${path}: HTTP ${res.statusCode} ${text.slice(0, 300)}`);
    return JSON.parse(text) as T;
  };

  for (const members of o.roomSizes) {
    const user = (j: number) => `m${ctx.runId}r${members}i${j}`;
    const part = `room ${members}`;
    // ---- SimpleChat: the room made through the Server API before its members connect (no room.event traffic)
    say(`room of ${members}: creating it through the Server API (${N} gateways, ${W} load processes)`);
    const t0 = performance.now();
    const initial = Array.from({ length: Math.min(members, 200) - 1 }, (_, j) => user(j + 1));
    const created = await api<{ room: string }>('POST', '/rooms', { name: `bench ${members}`, owner: user(0), members: initial });
    const room = created.room;
    let next = initial.length + 1;
    await Promise.all(
      Array.from({ length: 24 }, async () => {
        while (next < members) {
          const j = next++;
          await api('POST', `/rooms/${encodeURIComponent(room)}/members`, { userId: user(j) });
        }
      }),
    );
    say(`room ${room}: ${members} members in ${((performance.now() - t0) / 1000).toFixed(1)} s; connecting them`);
    const c = await ctx.allConnect('room', 'simplechat', layout(members, cluster.wsUrls, user), cluster.jwtSecret, 50);
    if (c.failed) throw new Error(`room members: ${c.failed} of ${c.ok + c.failed} failed to register (${c.firstError})`);
    await sleep(500);
    const sc = await stepsAndHold('simplechat', members, room, part);
    await ctx.allClose('room');

    // ---- Socket.IO with its Redis adapter, the same members over N nodes
    const nodes: { child: Child; url: string }[] = [];
    const key = `scbench:${ctx.runId}:sioroom${members}`;
    for (let i = 1; i <= N; i++) {
      const { child, port } = await ctx.startHelper('sio-server.ts', `sio-${i}`, [ctx.redisUrl, key], members + 1000);
      nodes.push({ child, url: `http://127.0.0.1:${port}` });
    }
    ctx.setSioTracked(nodes.map((n) => ctx.childTracked(n.child)));
    const sioRoom = `room-${members}`;
    say(`Socket.IO + Redis adapter: ${N} nodes, ${members} members joining ${sioRoom}`);
    const s = await ctx.allConnect('room', 'socketio', layout(members, nodes.map((n) => n.url), user, sioRoom), undefined, 50);
    if (s.failed) throw new Error(`Socket.IO room members: ${s.failed} of ${s.ok + s.failed} failed to connect (${s.firstError})`);
    await sleep(500);
    const sio = await stepsAndHold('socketio', members, sioRoom, `socket.io ${part}`);
    await ctx.allClose('room');
    for (const n of nodes) n.child.proc.kill('SIGTERM');
    await Promise.all(nodes.map((n) => n.child.exitedPromise));
    ctx.setSioTracked([]);

    // ---- the headline of this room size
    const test = `${members}-member room: deliveries/s held ${o.holdMs / 1000} s, 0 lost, delivery p99 < ${ROOM_P99_MS} ms`;
    const missed = (r: { best?: RoomRow }) => `not held${r.best ? `; best step with 0 lost and p99 < 1 s: ${num(r.best.offered)} msg/s = ${num(r.best.deliveredPerSec)} deliveries/s at p99 ${Math.round(r.best.deliveryP99 ?? 0)} ms` : ''}`;
    const ratio = sc.held && sio.held ? sc.held.deliveredPerSec / sio.held.deliveredPerSec : undefined;
    const vs = (other: string, b: RoomRow | undefined) =>
      `${b ? `${other} held ${num(b.deliveredPerSec)} deliveries/s (${num(b.offered)} msg/s)` : `${other} held none`}${ratio === undefined ? '' : `; SimpleChat / Socket.IO = ${ratio.toFixed(2)}`}`;
    headlines.push(sc.held ? tableRow('HEADLINE', `${test} — SimpleChat`, sc.held, vs('Socket.IO', sio.held)) : { part: 'HEADLINE', test: `${test} — SimpleChat`, note: `${missed(sc)}; ${vs('Socket.IO', sio.held)}` });
    headlines.push(sio.held ? tableRow('HEADLINE', `${test} — Socket.IO + Redis adapter`, sio.held, vs('SimpleChat', sc.held)) : { part: 'HEADLINE', test: `${test} — Socket.IO + Redis adapter`, note: missed(sio) });
  }
  ctx.rows.push(...headlines);
}
