/**
 * Fault-injection suite (issue 4): real processes, private Redis, RabbitMQ
 * and Postgres, steady traffic from the project's own resilient client, one
 * fault per scenario, then the books. Prints the table (and writes
 * test-results/faults.json); every row must show lost 0 and duplicated 0.
 *
 *   npm run test:faults
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { describe, it, beforeAll, afterAll, expect } from 'vitest';
import { startInfra, type Infra } from './infra';
import { startCluster, createRoom, TIMINGS } from './cluster';
import { createLoad, type Load } from './load';
import { converge, closeBooks, type Books } from './books';
import { checkUnread, type UnreadBooks } from './unread';
import { scenarios, type Ctx, type Scenario, type Check } from './scenarios';
import { cleanupSync, waitUntil } from './procs';


interface Row {
  scenario: string;
  acked: number;
  stored: number;
  lost: number;
  duplicated: number;
  recoveryMs: number;
  settledMs: number;
  books?: Books;
  unread?: UnreadBooks;
  checks: Check[];
  notes: string[];
  error?: string;
  wallMs: number;
}

/** acked messages before the fault: about 2 s of the load's 40 messages/s */
const WARMUP_ACKS = 80;

/** messages of the load acked at or after `since` */
function ackedSince(load: Load, since: number): number {
  let n = 0;
  for (const r of load.records.values()) if (r.ackedAt !== undefined && r.ackedAt >= since) n++;
  return n;
}

const rows: Row[] = [];
let infra: Infra | undefined;
const suiteStarted = Date.now();
const run = randomBytes(2).toString('hex');

async function runScenario(s: Scenario, index: number): Promise<Row> {
  if (!infra) throw new Error('infrastructure did not start');
  const started = Date.now();
  const checks: Check[] = [];
  const notes: string[] = [];
  const tag = `f${run}${index + 1}`;
  const row: Row = { scenario: s.name, acked: 0, stored: 0, lost: 0, duplicated: 0, recoveryMs: 0, settledMs: 0, checks, notes, wallMs: 0 };
  // A scenario that stopped a service and failed half-way must not leave it down for the next one.
  for (const svc of [infra.redis, infra.rabbit, infra.postgres]) if (!(await svc.isUp())) await svc.start();
  const cluster = await startCluster(infra, { tag, ...s.cluster });
  const load = createLoad({
    urls: cluster.wsUrls,
    users: 24,
    multi: 8,
    token: (u) => cluster.token(u),
    ratePerSec: 40,
    maxInFlightPerConn: 4,
    prefix: `${tag}-`,
    ...s.load,
  });
  const ctx: Ctx = {
    infra,
    cluster,
    load,
    extra: [],
    checks,
    notes,
    faultAt: 0,
    check(name, ok, detail = '') {
      checks.push({ name, ok, detail });
    },
    async waitCheck(name, probe, timeoutMs) {
      try {
        const ms = await waitUntil(name, probe, timeoutMs, 50);
        checks.push({ name, ok: true, detail: `after ${ms} ms` });
        return ms;
      } catch (err) {
        checks.push({ name, ok: false, detail: (err as Error).message });
        return undefined;
      }
    },
  };
  try {
    await load.ready(15_000);
    // A room with every user of the load, its members spread over both instances: a share of the traffic goes to it.
    load.setRoom(await createRoom(cluster.wsUrls[0] as string, await cluster.token(load.users[0] as string), `${tag} room`, load.users), load.users);
    load.start();
    // Steady traffic first: the fault hits a cluster that is carrying messages (about 2 s at the load's rate).
    await waitUntil('warm-up traffic acked', () => ackedSince(load, 0) >= (s.warmupAcks ?? WARMUP_ACKS), 30_000, 50);
    ctx.faultAt = Date.now();
    await s.inject(ctx);
    const injectedAt = Date.now();
    const afterAcks = s.afterAcks ?? WARMUP_ACKS;
    await waitUntil('traffic after the fault acked', () => ackedSince(load, injectedAt) >= afterAcks, 60_000, 50);
    load.stop();
    const settled = await converge(cluster, load, ctx.extra, 45_000);
    row.settledMs = settled.ms;
    if (!settled.settled) notes.push(`books did not settle within ${settled.ms} ms`);
    await s.verify?.(ctx);
    const books = await closeBooks(cluster, load, ctx.extra, ctx.faultAt, TIMINGS.SYNC_INTERVAL_MS);
    Object.assign(row, { acked: books.acked, stored: books.stored, lost: books.lost, duplicated: books.duplicated, recoveryMs: books.recoveryMs, books });
    row.unread = await checkUnread(cluster, load.users);
  } catch (err) {
    row.error = (err as Error).stack ?? String(err);
  } finally {
    await load.close().catch(() => undefined);
    const logs = cluster.ws.concat([cluster.persist, cluster.discover]).map((n) => {
      try {
        return `--- ${n.name}\n${n.proc.tail(40)}`;
      } catch {
        return '';
      }
    });
    if (row.error || row.lost || row.duplicated || row.books?.late || row.books?.missedLive || checks.some((c) => !c.ok)) notes.push(`last log lines:\n${logs.join('\n')}`);
    await cluster.stop();
    row.wallMs = Date.now() - started;
  }
  return row;
}

function table(): string {
  const head = ['scenario', 'acked', 'stored', 'lost', 'duplicated', 'recovery', 'unread wrong (lists, read marks)'];
  const body = rows.map((r) => [r.scenario, String(r.acked), String(r.stored), String(r.lost), String(r.duplicated), r.error ? 'error' : `${(r.recoveryMs / 1000).toFixed(1)} s`, r.unread ? `${r.unread.wrong} (${r.unread.conversations}, ${r.unread.marked})` : '-']);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join(' | ')} |`;
  return [line(head), `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...body.map(line)].join('\n');
}

describe.sequential('faults: an acked message is never lost or doubled', () => {
  beforeAll(async () => {
    infra = await startInfra();
  }, 120_000);

  afterAll(async () => {
    await infra?.close();
    cleanupSync();
    const wallMs = Date.now() - suiteStarted;
    const dir = resolve(__dirname, '..', '..', 'test-results');
    mkdirSync(dir, { recursive: true });
    writeFileSync(resolve(dir, 'faults.json'), `${JSON.stringify({ at: new Date().toISOString(), wallMs, rows }, null, 2)}\n`);
    console.log(`\nFault suite (${(wallMs / 1000).toFixed(0)} s):\n${table()}\n`);
  }, 60_000);

  scenarios.forEach((s, i) => {
    it(s.name, async () => {
      const row = await runScenario(s, i);
      rows.push(row);
      const failed = row.checks.filter((c) => !c.ok);
      if (row.books?.missedLive) console.log(`${s.name}: ${row.books.missedLive} live deliveries missed before the fault\n${row.books.details.join('\n')}\n${row.notes.join('\n')}`);
      const summary = [
        row.error ? `error: ${row.error}` : '',
        ...(row.books?.details ?? []),
        ...(row.unread?.details ?? []),
        ...failed.map((c) => `check failed: ${c.name} (${c.detail})`),
        ...row.notes,
      ]
        .filter(Boolean)
        .join('\n');
      expect(row.error, summary).toBeUndefined();
      expect(row.lost, summary).toBe(0);
      expect(row.duplicated, summary).toBe(0);
      expect(row.books?.notStored, summary).toBe(0);
      expect(row.books?.notSeen, summary).toBe(0);
      expect(row.books?.unexpectedStored, summary).toBe(0);
      expect(row.books?.unacked, summary).toBe(0);
      expect(row.books?.late, summary).toBe(0);
      expect(row.stored, summary).toBe(row.acked);
      expect(row.unread?.wrong, summary).toBe(0);
      expect(failed.map((c) => c.name), summary).toEqual([]);
    }, 180_000);
  });
});
