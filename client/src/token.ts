/**
 * Token timing: when a cached token is still good enough to register with, and
 * when to refresh it on a live connection (PROTOCOL.md "refresh").
 */

/** A cached token closer than this to its exp is replaced before a (re)connect. */
export const TOKEN_MIN_REMAINING_MS = 30_000;
/** setTimeout fires at once for larger delays. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** `exp` (seconds) of a JWT, read without verification: only to plan reuse and refresh. */
export function jwtExp(token: string): number | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const payload: unknown = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof payload !== 'object' || payload === null) return undefined;
    const exp: unknown = Reflect.get(payload, 'exp');
    return typeof exp === 'number' && Number.isFinite(exp) ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** A token whose exp is known and not too close can be registered with again. */
export function isTokenFresh(exp: number | undefined, now = Date.now()): boolean {
  return exp !== undefined && exp * 1000 - now > TOKEN_MIN_REMAINING_MS;
}

/** When to refresh: a minute before exp; a short-lived token halfway instead, never in a tight loop. */
export function refreshDelayMs(exp: number, now = Date.now()): number {
  const remaining = exp * 1000 - now;
  const delay = remaining > 120_000 ? remaining - 60_000 : Math.max(1_000, remaining / 2);
  return Math.min(delay, MAX_TIMER_MS);
}
