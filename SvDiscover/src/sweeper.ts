/**
 * Periodically removes the claims of instances whose lease lapsed. Sweeps never
 * overlap within one process; across SvDiscover copies the registry's sweep is
 * safe to run concurrently. Redis being down is logged and retried next tick.
 */
import { errorMessage, type Logger } from '@simplechat/shared';
import type { Registry } from './registry';
import { createLogThrottle } from '@simplechat/shared';

export interface SweeperDeps {
  registry: Pick<Registry, 'sweep'>;
  intervalMs: number;
  log: Logger;
}

export interface Sweeper {
  close(): Promise<void>;
}

const FAILURE_LOG_INTERVAL_MS = 60_000;

export function createSweeper(deps: SweeperDeps): Sweeper {
  const { registry, intervalMs, log } = deps;
  const failures = createLogThrottle(FAILURE_LOG_INTERVAL_MS);
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let isClosed = false;

  async function tick(): Promise<void> {
    try {
      const swept = await registry.sweep();
      if (swept.length > 0) log.debug({ swept }, 'swept lapsed instances');
      const failed = failures.end();
      if (failed > 0) log.debug({ failures: failed }, 'sweep works again');
    } catch (err) {
      if (failures.shouldLog()) log.warn({ failures: failures.count }, `sweep failed, retrying every ${intervalMs} ms: ${errorMessage(err)}`);
      else log.debug({ failures: failures.count }, `sweep failed: ${errorMessage(err)}`);
    }
  }

  function schedule(): void {
    if (isClosed) return;
    timer = setTimeout(() => {
      running = tick().finally(() => {
        running = undefined;
        schedule();
      });
    }, intervalMs);
    // background maintenance must not keep a process alive on its own
    timer.unref();
  }

  schedule();

  let closing: Promise<void> | undefined;
  return {
    close() {
      closing ??= (async () => {
        isClosed = true;
        clearTimeout(timer);
        await running;
      })();
      return closing;
    },
  };
}
