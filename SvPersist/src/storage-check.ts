/**
 * Whether storage can do its job: Postgres answers, the database exists and is
 * migrated up to the newest migration. Checked at startup, on every health and
 * readiness probe, and soon after a query fails because of storage's state;
 * while storage is not ready it is checked again with backoff, so the way back
 * is noticed (and logged) with no probe and no traffic.
 *
 * A problem is logged at warn when found, again at most once a minute while
 * it lasts (the checks between at debug), and its end once at info.
 */
import { backoffMs, createLogThrottle, type Logger } from '@simplechat/shared';
import type { StorageStatus, Store } from './store';

export interface StorageCheckDeps {
  store: Pick<Store, 'inspect'>;
  /** where the database is, for the ready line: "127.0.0.1:5432/simplechat" */
  target: string;
  log: Logger;
  /** bound of one check */
  timeoutMs: number;
}

export interface StorageCheck {
  /** Asks Postgres now (checks asked at the same time share one query) and logs a change. */
  check(): Promise<StorageStatus>;
  /** A query failed because of storage's state: check again soon. */
  suspect(): void;
  close(): Promise<void>;
}

const STILL_NOT_READY_LOG_INTERVAL_MS = 60_000;
/** failing queries come in bursts: one check for a burst */
const SUSPECT_MIN_INTERVAL_MS = 1000;
const RETRY_BASE_MS = 200;
const RETRY_MAX_MS = 5000;

export function createStorageCheck(deps: StorageCheckDeps): StorageCheck {
  const log = deps.log.child({ component: 'storage' });
  const stillNotReady = createLogThrottle(STILL_NOT_READY_LOG_INTERVAL_MS);
  let last: StorageStatus | undefined;
  let notReadySince = 0;
  let checking: Promise<StorageStatus> | undefined;
  let lastCheckedAt = 0;
  let timer: NodeJS.Timeout | undefined;
  let retryAttempt = 0;
  let isClosed = false;
  let closing: Promise<void> | undefined;

  function check(): Promise<StorageStatus> {
    checking ??= deps.store
      .inspect(deps.timeoutMs)
      .then((status) => {
        lastCheckedAt = Date.now();
        report(status);
        return status;
      })
      .finally(() => {
        checking = undefined;
      });
    return checking;
  }

  function report(status: StorageStatus): void {
    const was = last;
    last = status;
    if (status.isReady) {
      retryAttempt = 0;
      stillNotReady.reset();
      if (!was) log.info({ database: deps.target }, `storage ready: Postgres database ${deps.target} answers and is migrated`);
      else if (!was.isReady) log.info({ database: deps.target, notReadyS: Math.round((Date.now() - notReadySince) / 1000) }, `storage ready again: Postgres database ${deps.target} answers and is migrated`);
      return;
    }
    if (!was || was.isReady || was.problem !== status.problem) {
      if (!was || was.isReady) notReadySince = Date.now();
      stillNotReady.reset();
      stillNotReady.shouldLog();
      log.warn({ problem: status.problem }, status.reason);
    } else if (stillNotReady.shouldLog()) {
      log.warn({ problem: status.problem, checks: stillNotReady.count, notReadyS: Math.round((Date.now() - notReadySince) / 1000) }, status.reason);
    } else {
      log.debug({ problem: status.problem, checks: stillNotReady.count }, status.reason);
    }
    recheckIn(backoffMs(retryAttempt++, RETRY_BASE_MS, RETRY_MAX_MS));
  }

  function recheckIn(ms: number): void {
    if (isClosed || timer) return;
    timer = setTimeout(() => {
      timer = undefined;
      void check();
    }, ms);
  }

  void check();

  return {
    check,
    suspect() {
      // A check under way or planned will see it; a burst of failures makes one check.
      if (checking) return;
      recheckIn(Math.max(0, lastCheckedAt + SUSPECT_MIN_INTERVAL_MS - Date.now()));
    },
    close() {
      closing ??= (async () => {
        isClosed = true;
        if (timer) clearTimeout(timer);
        timer = undefined;
        // settles within timeoutMs; the pool closes after this
        await checking;
      })();
      return closing;
    },
  };
}
