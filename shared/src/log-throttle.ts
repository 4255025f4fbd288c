/**
 * Decides whether a repeated problem deserves another log line: the first of
 * a streak always, then at most one per intervalMs, so that a dependency down
 * for an hour writes a few dozen lines, not one per retry.
 */
export interface LogThrottle {
  /** true when this occurrence should be logged at warn */
  shouldLog(): boolean;
  /** the streak is over; the next occurrence is logged again */
  reset(): void;
  /** ends the streak (as reset) and returns how many occurrences it had: 0 when there was none, so nothing to say recovered */
  end(): number;
  /** occurrences since the last reset */
  readonly count: number;
}

export function createLogThrottle(intervalMs: number, now: () => number = Date.now): LogThrottle {
  let lastAt = -Infinity;
  let count = 0;
  const reset = () => {
    count = 0;
    lastAt = -Infinity;
  };
  return {
    shouldLog() {
      count += 1;
      const t = now();
      if (count === 1 || t - lastAt >= intervalMs) {
        lastAt = t;
        return true;
      }
      return false;
    },
    reset,
    end() {
      const n = count;
      reset();
      return n;
    },
    get count() {
      return count;
    },
  };
}
