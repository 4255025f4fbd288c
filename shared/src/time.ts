export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref?.());

/** Exponential backoff with full jitter, capped. attempt starts at 0. */
export function backoffMs(attempt: number, baseMs = 200, maxMs = 10_000): number {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 16));
  return Math.round(cap / 2 + Math.random() * (cap / 2));
}
