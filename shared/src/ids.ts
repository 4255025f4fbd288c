import { monotonicFactory } from 'ulid';

/**
 * Message ids are ULIDs from a monotonic factory: they sort as strings in
 * acceptance order within one process, strictly so even within one millisecond.
 */
export function createIdFactory(): (now: number) => string {
  const next = monotonicFactory();
  return (now: number) => next(now);
}

export function randomToken(bytes = 8): string {
  return require('node:crypto').randomBytes(bytes).toString('hex') as string;
}
