/**
 * Keeps the processes of `npm start` running. A process that exits on its own is started
 * again after a delay: firstMs, doubling while it keeps exiting, at most maxMs; one that ran
 * for stableMs or longer starts the schedule over. stop() cancels pending restarts and never
 * restarts a process it stops.
 */
import type { ChildProcess } from 'node:child_process';
import { errorMessage } from '../../shared/src/errors';

export interface Backoff {
  firstMs: number;
  maxMs: number;
  /** a process that ran this long before it exited is restarted after firstMs again */
  stableMs: number;
}

export const RESTART_BACKOFF: Backoff = { firstMs: 2_000, maxMs: 30_000, stableMs: 60_000 };

/** The delay before the `streak`-th restart in a row (1, 2, …) of a process that keeps exiting. */
export function restartDelayMs(streak: number, backoff: Backoff): number {
  return Math.min(backoff.firstMs * 2 ** (streak - 1), backoff.maxMs);
}

/** Time as the supervisor schedules restarts and the stop deadline (a test passes one it moves itself). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(timer: unknown): void;
}

const SYSTEM_CLOCK: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout),
};

export interface ProcessSpec {
  name: string;
  /** starts the process; called again for every restart */
  spawn: () => ChildProcess;
  /** resolves true once `child` serves, false when it exited first */
  waitUp: (child: ChildProcess) => Promise<boolean>;
}

export interface Supervised {
  readonly name: string;
  /** the running process, or the one that exited last while its restart is pending */
  readonly child: ChildProcess;
  /** resolves true once that process serves (and the supervisor counts it as up), false when it exited first */
  readonly up: Promise<boolean>;
}

export interface SupervisorDeps {
  say: (line: string) => void;
  backoff?: Backoff;
  clock?: Clock;
}

export interface Supervisor {
  run(spec: ProcessSpec): Supervised;
  /** Cancels pending restarts, then SIGTERMs group after group, each once the one before has exited; SIGKILLs what still runs after deadlineMs. */
  stop(groups: Supervised[][], deadlineMs: number): Promise<void>;
  /** SIGKILLs every running process at once (this script is exiting). */
  killAll(): void;
}

interface Entry extends Supervised {
  child: ChildProcess;
  closed: Promise<void>;
  startedAt: number;
  isUp: boolean;
  up: Promise<boolean>;
  streak: number;
  restarts: number;
  timer?: unknown;
}

const isRunning = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;

export function createSupervisor({ say, backoff = RESTART_BACKOFF, clock = SYSTEM_CLOCK }: SupervisorDeps): Supervisor {
  const entries: Entry[] = [];
  let stopping = false;

  function start(spec: ProcessSpec, entry?: Entry): Entry {
    const child = spec.spawn();
    // 'close', not 'exit': the process's last lines (a configuration error) are printed before ours
    const closed = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('close', (code, signal) => resolve([code, signal])));
    child.on('error', (err) => say(`${spec.name} could not be started: ${errorMessage(err)}`));
    const e: Entry = Object.assign(entry ?? { name: spec.name, streak: 0, restarts: 0 }, { child, closed: closed.then(() => undefined), startedAt: clock.now(), isUp: false, up: Promise.resolve(false) });
    e.up = spec.waitUp(child).then((up) => {
      if (!up || e.child !== child || stopping) return up;
      e.isUp = true;
      if (e.restarts > 0) say(`${spec.name} is up again (pid ${child.pid})`);
      return up;
    });
    void closed.then(([code, signal]) => {
      if (stopping) return;
      if (clock.now() - e.startedAt >= backoff.stableMs) e.streak = 0;
      e.streak += 1;
      e.restarts += 1;
      const delayMs = restartDelayMs(e.streak, backoff);
      say(`${spec.name} exited (${signal ?? `code ${code}`})${e.isUp ? '' : ' before it was up'}; restarting it in ${delayMs / 1000} s (restart ${e.restarts})`);
      e.timer = clock.setTimeout(() => {
        e.timer = undefined;
        start(spec, e);
      }, delayMs);
    });
    return e;
  }

  function killAll(): void {
    for (const e of entries) if (isRunning(e.child)) e.child.kill('SIGKILL');
  }

  return {
    run(spec) {
      const e = start(spec);
      entries.push(e);
      return e;
    },
    async stop(groups, deadlineMs) {
      stopping = true;
      for (const e of entries) {
        if (e.timer !== undefined) clock.clearTimeout(e.timer);
        e.timer = undefined;
      }
      const deadline = clock.setTimeout(killAll, deadlineMs);
      for (const group of groups) {
        await Promise.all(
          entries
            .filter((e) => group.includes(e))
            .map((e) => {
              if (!isRunning(e.child)) return undefined;
              e.child.kill('SIGTERM');
              return e.closed;
            }),
        );
      }
      clock.clearTimeout(deadline);
    },
    killAll,
  };
}
