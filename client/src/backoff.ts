/** Exponential backoff with jitter (half the cap plus up to half again), capped. attempt starts at 0. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number): number {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 16));
  return Math.round(cap / 2 + Math.random() * (cap / 2));
}
