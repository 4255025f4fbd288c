import { monotonicFactory } from 'ulid';

/**
 * Message ids are ULIDs from a monotonic factory: they sort as strings in
 * acceptance order within one process, strictly so even within one millisecond.
 */
export function createIdFactory(): (now: number) => string {
  const next = monotonicFactory(pooledRandom());
  return (now: number) => next(now);
}

/**
 * ulid asks its PRNG once per character; the default calls crypto.randomBytes
 * each time. This reads the same cryptographic randomness from a pooled buffer.
 */
function pooledRandom(): () => number {
  const { randomFillSync } = require('node:crypto') as typeof import('node:crypto');
  const pool = new Uint32Array(1024);
  let i = pool.length;
  return () => {
    if (i === pool.length) {
      randomFillSync(pool);
      i = 0;
    }
    return (pool[i++] as number) / 0x1_0000_0000;
  };
}

export function randomToken(bytes = 8): string {
  return require('node:crypto').randomBytes(bytes).toString('hex') as string;
}
