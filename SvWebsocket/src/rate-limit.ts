/** Token bucket: `take()` returns 0 when allowed, else the ms until a token is available. */
export interface TokenBucket {
  take(now?: number): number;
}

export function createTokenBucket(ratePerSec: number, burst: number): TokenBucket {
  let tokens = burst;
  let last = Date.now();
  return {
    take(now = Date.now()) {
      tokens = Math.min(burst, tokens + ((now - last) / 1000) * ratePerSec);
      last = now;
      if (tokens >= 1) {
        tokens -= 1;
        return 0;
      }
      return Math.ceil(((1 - tokens) / ratePerSec) * 1000);
    },
  };
}

/** Counts events in a sliding window (bad frames per minute). */
export function createWindowCounter(windowMs: number): { hit(now?: number): number } {
  const hits: number[] = [];
  return {
    hit(now = Date.now()) {
      hits.push(now);
      while (hits.length > 0 && (hits[0] as number) <= now - windowMs) hits.shift();
      return hits.length;
    },
  };
}
