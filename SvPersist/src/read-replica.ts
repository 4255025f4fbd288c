/**
 * Reads that may lag (history, sync) go to a streaming replica (DATABASE_READ_URL), never at
 * the cost of a skipped message or an error while the primary is fine:
 * - before each read, the primary's current WAL position is taken (pg_current_wal_lsn(), no
 *   lock, one short round trip); the replica is read once it has replayed up to there, so it
 *   shows everything committed before the request. A replica still short of it after
 *   `catchUpMs` (polled) is passed over: the read goes to the primary.
 * - a replica that fails (down, refusing, not answering within its timeouts) is left alone
 *   for `retryAfterMs`, reads going to the primary meanwhile; that is logged once when it
 *   starts and once when the replica serves again, not per request.
 * Counted: reads the replica served, and reads the primary served instead (by why).
 */
import type { Sequelize } from 'sequelize';
import { errorMessage, UnavailableError, type Logger } from '@simplechat/shared';
import { createSelect, storageWhere, type Select } from './store';

/** Where reads that may lag are run. */
export interface ReadRoute {
  /** Runs `read` against one server; resolves with its result. */
  run<T>(read: (select: Select) => Promise<T>): Promise<T>;
}

export type FallbackReason = 'behind' | 'unavailable';

export interface ReplicaMetrics {
  served(): void;
  fellBack(reason: FallbackReason): void;
}

export interface ReadReplicaDeps {
  primary: Sequelize;
  replica: Sequelize;
  log: Logger;
  metrics: ReplicaMetrics;
  /** how long a read waits for the replica to catch up with the primary (default 100) */
  catchUpMs?: number;
  /** after a failure, how long reads go to the primary before the replica is tried again (default 2000) */
  retryAfterMs?: number;
  onFailure?(): void;
}

const PRIMARY_LSN_SQL = 'SELECT pg_current_wal_lsn()::text AS lsn';
// null when the server is not a standby (pg_last_wal_replay_lsn() is null on a primary): then it is current.
const REPLAYED_SQL = "SELECT pg_is_in_recovery() AS standby, coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) AS caught_up";
const POLL_MS = 5;

export function createReadReplica(deps: ReadReplicaDeps): ReadRoute {
  const log = deps.log.child({ component: 'read-replica' });
  const primarySelect = createSelect(deps.primary, deps.onFailure);
  const replicaSelect = createSelect(deps.replica);
  const catchUpMs = deps.catchUpMs ?? 100;
  const retryAfterMs = deps.retryAfterMs ?? 2000;
  const where = storageWhere(deps.replica);
  const target = `${where.hostPort}/${where.database}`;
  let downUntil = 0;
  let isDown = false;

  function failed(err: unknown): void {
    downUntil = Date.now() + retryAfterMs;
    if (isDown) return;
    isDown = true;
    log.warn({ replica: target, err: errorMessage(err) }, `the read replica at ${target} failed; history and sync read the primary and the replica is tried again every ${retryAfterMs} ms`);
  }

  /** Whether the replica has replayed the primary's WAL up to `lsn`, polled for up to catchUpMs. */
  async function caughtUp(lsn: string): Promise<boolean> {
    const deadline = Date.now() + catchUpMs;
    for (;;) {
      const [row] = await replicaSelect<{ standby: boolean; caught_up: boolean }>(REPLAYED_SQL, [lsn]);
      if (!row?.standby || row.caught_up) return true;
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  return {
    async run(read) {
      if (Date.now() < downUntil) {
        deps.metrics.fellBack('unavailable');
        return read(primarySelect);
      }
      const [primary] = await primarySelect<{ lsn: string }>(PRIMARY_LSN_SQL, []);
      let result: Awaited<ReturnType<typeof read>>;
      try {
        if (!(await caughtUp(primary?.lsn ?? '0/0'))) {
          deps.metrics.fellBack('behind');
          return read(primarySelect);
        }
        result = await read(replicaSelect);
      } catch (err) {
        // a query that fails for its own sake fails on the primary alike: only an unavailable replica is passed over
        if (!(err instanceof UnavailableError)) throw err;
        failed(err);
        deps.metrics.fellBack('unavailable');
        return read(primarySelect);
      }
      if (isDown) {
        isDown = false;
        log.info({ replica: target }, 'the read replica serves history and sync again');
      }
      deps.metrics.served();
      return result;
    },
  };
}
