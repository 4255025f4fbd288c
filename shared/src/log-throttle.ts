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
  /** occurrences since the last reset */
  readonly count: number;
}

export function createLogThrottle(intervalMs: number, now: () => number = Date.now): LogThrottle {
  let lastAt = -Infinity;
  let count = 0;
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
    reset() {
      count = 0;
      lastAt = -Infinity;
    },
    get count() {
      return count;
    },
  };
}
