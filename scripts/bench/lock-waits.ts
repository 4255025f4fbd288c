/**
 * Lock waits of a database's writers, sampled: a connection of its own asks
 * pg_stat_activity every `intervalMs` about the database's backends of one
 * application (application_name, 'SvPersist' for the writers), and keeps,
 * per sample, how many were running a statement and how many of those waited
 * on an advisory lock (wait_event_type 'Lock', wait_event 'advisory': the
 * storage's partition lock). It also keeps every backend pid it saw, so their
 * CPU can be read from /proc (see procs.ts).
 */
import { Client } from 'pg';

export interface LockSample {
  /** performance.now() when the answer came */
  at: number;
  /** backends running a statement (state 'active') */
  active: number;
  /** of those, waiting on an advisory lock */
  advisory: number;
  /** the wait events of those waiting on a light-weight lock (WAL, buffers, the sequence's page) */
  lwlocks: string[];
}

export interface LockWaits {
  /** every backend pid of the application seen so far */
  pids(): number[];
  stop(): Promise<LockSample[]>;
}

export interface LockWaitSummary {
  /** samples taken in the window */
  samples: number;
  /** samples in which some backend was running a statement */
  busySamples: number;
  /** samples in which at least one backend waited on an advisory lock */
  waitingSamples: number;
  /** waitingSamples / samples */
  waitingShare: number;
  /** backends waiting / backends running a statement, over all samples (the share of the writers' time spent waiting) */
  waitingBackendShare: number;
  /** the mean time between samples, ms */
  intervalMs: number;
}

const SAMPLE_SQL = `
  SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity
  WHERE datname = current_database() AND application_name = $1 AND backend_type = 'client backend'`;

export async function sampleLockWaits(databaseUrl: string, opts: { intervalMs: number; application: string }): Promise<LockWaits> {
  const db = new Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000, application_name: 'bench lock sampler' });
  db.on('error', () => undefined);
  await db.connect();
  const seen = new Set<number>();
  const samples: LockSample[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const started = performance.now();
      try {
        const r = await db.query<{ pid: number; state: string | null; wait_event_type: string | null; wait_event: string | null }>(SAMPLE_SQL, [opts.application]);
        let active = 0;
        let advisory = 0;
        const lwlocks: string[] = [];
        for (const row of r.rows) {
          seen.add(row.pid);
          if (row.state !== 'active') continue;
          active++;
          if (row.wait_event_type === 'Lock' && row.wait_event === 'advisory') advisory++;
          if (row.wait_event_type === 'LWLock') lwlocks.push(row.wait_event ?? '?');
        }
        samples.push({ at: performance.now(), active, advisory, lwlocks });
      } catch {
        // a failed sample is left out
      }
      const wait = opts.intervalMs - (performance.now() - started);
      if (wait > 0) await new Promise((res) => setTimeout(res, wait));
    }
  })();
  return {
    pids: () => [...seen],
    async stop() {
      running = false;
      await loop;
      await db.end().catch(() => undefined);
      return samples;
    },
  };
}

/** The samples taken between `from` and `to` (performance.now()), summed up. */
export function summariseLockWaits(samples: readonly LockSample[], from: number, to: number): LockWaitSummary {
  const inWindow = samples.filter((s) => s.at >= from && s.at <= to);
  const busy = inWindow.filter((s) => s.active > 0);
  const waiting = inWindow.filter((s) => s.advisory > 0);
  const active = inWindow.reduce((n, s) => n + s.active, 0);
  const advisory = inWindow.reduce((n, s) => n + s.advisory, 0);
  const first = inWindow[0];
  const last = inWindow[inWindow.length - 1];
  return {
    samples: inWindow.length,
    busySamples: busy.length,
    waitingSamples: waiting.length,
    waitingShare: inWindow.length ? waiting.length / inWindow.length : 0,
    waitingBackendShare: active ? advisory / active : 0,
    intervalMs: first && last && inWindow.length > 1 ? (last.at - first.at) / (inWindow.length - 1) : 0,
  };
}
