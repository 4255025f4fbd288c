/** Ids a client makes up: idempotency keys of sends, prefixes of request ids. */

/** A random UUID; crypto.randomUUID exists only in secure contexts (https, localhost), so getRandomValues stands in. */
export function randomId(): string {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
  b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A short random prefix for the ids one client generates (`c` and eight base-36 characters). */
export function randomPrefix(): string {
  return `c${Math.random().toString(36).slice(2, 10).padEnd(8, '0')}`;
}
