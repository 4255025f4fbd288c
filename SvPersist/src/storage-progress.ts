/**
 * How far storage got, across every SvPersist. An instance knows only its own writers: what
 * they hold unstored, and whether the queues they consume have anything ready. With several
 * instances consuming the partitions, another one may hold a batch (a receipt, say) that this
 * one cannot see, so every instance writes its own view to Postgres each second
 * (storage_progress) and the missed-message decision takes the least of its own and every fresh
 * one of the others'. A report only ever says something that stays true: everything accepted
 * until then is stored.
 *
 * An instance that stops deletes its row once its writers have closed. One that died leaves a
 * row, ignored once it is `staleMs` old: by then the broker has handed what the instance held
 * back to the queue (at once when its connection closed; a host that vanished is noticed by
 * the broker's heartbeat), where the others see it ready.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Sequelize } from 'sequelize';
import { errorMessage, type Logger } from '@simplechat/shared';
import { createSelect, type StorageProblem } from './store';

export interface StorageProgressDeps {
  sequelize: Sequelize;
  /** until when everything accepted that this instance's writers were handed is stored (ms) */
  local(): Promise<number>;
  log: Logger;
  /** this instance's row (default: host, pid and a random part) */
  instanceId?: string;
  /** time between reports (default 1000) */
  intervalMs?: number;
  /** a report older than this is ignored (default 10000) */
  staleMs?: number;
  onFailure?(problem: StorageProblem): void;
}

export interface StorageProgress {
  /** until when everything accepted is stored, as every running SvPersist sees it (ms) */
  storedUntil(): Promise<number>;
  /** reports now (the timer does every interval) */
  report(): Promise<void>;
  /** stops reporting and deletes this instance's row */
  close(): Promise<void>;
}

const REPORT_SQL = `
  INSERT INTO storage_progress (instance_id, caught_up_ms, reported_at) VALUES ($1, $2, now())
  ON CONFLICT (instance_id) DO UPDATE SET caught_up_ms = excluded.caught_up_ms, reported_at = excluded.reported_at`;
const OTHERS_SQL = `
  SELECT min(caught_up_ms)::text AS until FROM storage_progress
  WHERE instance_id <> $1 AND reported_at > now() - $2::int8 * interval '1 millisecond'`;
const DELETE_SQL = 'DELETE FROM storage_progress WHERE instance_id = $1';

export function createStorageProgress(deps: StorageProgressDeps): StorageProgress {
  const log = deps.log.child({ component: 'storage-progress' });
  const select = createSelect(deps.sequelize, deps.onFailure);
  const instanceId = deps.instanceId ?? `${hostname()}/${process.pid}/${randomUUID().slice(0, 8)}`;
  const staleMs = deps.staleMs ?? 10_000;
  let reporting: Promise<void> | undefined;
  let isClosed = false;
  let hasFailed = false;

  async function reportOnce(): Promise<void> {
    await select(REPORT_SQL, [instanceId, Math.floor(await deps.local())]);
    if (hasFailed) log.info('storage progress reported again');
    hasFailed = false;
  }

  function report(): Promise<void> {
    reporting ??= reportOnce().finally(() => (reporting = undefined));
    return reporting;
  }

  function tick(): void {
    if (isClosed) return;
    report().catch((err: unknown) => {
      if (!hasFailed) log.warn({ err: errorMessage(err) }, 'storage progress not reported (see err); the other instances notify as if this one held nothing');
      hasFailed = true;
    });
  }
  // The first report as soon as the caller has finished setting up, before the writers hold much.
  setImmediate(tick);
  const timer = setInterval(tick, deps.intervalMs ?? 1000);
  timer.unref();

  return {
    report,
    async storedUntil() {
      const [local, [others]] = await Promise.all([deps.local(), select<{ until: string | null }>(OTHERS_SQL, [instanceId, staleMs])]);
      return others?.until == null ? local : Math.min(local, Number(others.until));
    },
    async close() {
      isClosed = true;
      clearInterval(timer);
      await reporting?.catch(() => undefined);
      await select(DELETE_SQL, [instanceId]);
    },
  };
}
