/** Browser Origin allowlist for upgrades; `*` stands for any port. */
export function createOriginCheck(allowed: readonly string[]): (origin: string | undefined) => boolean {
  if (allowed.includes('*')) return () => true;
  const patterns = allowed.map((o) => new RegExp(`^${o.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/:\*$/, '(:\\d+)?')}$`, 'i'));
  return (origin) => origin === undefined || patterns.some((p) => p.test(origin));
}

export const DEVELOPMENT_ORIGINS = ['http://localhost:*', 'http://127.0.0.1:*'];
