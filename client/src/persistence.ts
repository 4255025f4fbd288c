/**
 * What a client can keep across restarts (a page reload, a process restart):
 * the sync cursor and the outbox of sends not acked yet. Resent with their
 * same ids, outbox entries never become a second message. Without a
 * persistence the client keeps both in memory (the `cursor` option seeds it).
 */

/** A send waiting for its ack: to a user (`to`) or a room (`room`). */
export type OutboxEntry = { id: string; body: string; createdAt: number } & ({ to: string; room?: undefined } | { room: string; to?: undefined });

export interface PersistedState {
  cursor?: string;
  outbox: readonly OutboxEntry[];
}

/** Where a client keeps its state: a browser page's localStorage, a file, a database... */
export interface ClientPersistence {
  /** Read once, when the client is created. */
  load(): PersistedState | undefined;
  /** Called after every change: the cursor moved, a send was queued, acked or refused. Keep it cheap (debounce the write if it is slow). */
  save(state: PersistedState): void;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The well-formed entries of a stored outbox (anything else is dropped, never trusted). */
export function parseOutbox(v: unknown): OutboxEntry[] {
  if (!Array.isArray(v)) return [];
  const out: OutboxEntry[] = [];
  for (const e of v) {
    if (!isRecord(e)) continue;
    const { id, to, room, body, createdAt } = e;
    if (typeof id !== 'string' || typeof body !== 'string' || typeof createdAt !== 'number') continue;
    if (typeof to === 'string' && room === undefined) out.push({ id, to, body, createdAt });
    else if (typeof room === 'string' && to === undefined) out.push({ id, room, body, createdAt });
  }
  return out;
}
