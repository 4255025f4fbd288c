/**
 * Presence from the client's side: the users this client watches, watched
 * again on every (re)registration (a watch belongs to a connection), in
 * frames of at most PRESENCE_USERS_PER_FRAME, and the last state of each.
 */
import { PRESENCE_USERS_PER_FRAME, type PresenceState } from './wire.js';

export interface PresenceDeps {
  /** sends a presence.watch and resolves with the states it answers */
  watch(users: string[]): Promise<Record<string, PresenceState>>;
  /** writes a frame on a registered connection; false when there is none */
  write(frame: object): boolean;
  /** states learned (answers and pushed changes) */
  changed(users: Record<string, PresenceState>): void;
}

export interface Presence {
  watch(users: readonly string[]): Promise<Record<string, PresenceState>>;
  unwatch(users: readonly string[]): void;
  /** a pushed `presence` frame */
  pushed(users: Record<string, PresenceState>): void;
  of(user: string): PresenceState | undefined;
  /** a (re)registration: everything watched is watched again */
  registered(): void;
}

function chunks<T>(list: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

export function createPresence(deps: PresenceDeps): Presence {
  const watched = new Set<string>();
  const states = new Map<string, PresenceState>();

  function learned(users: Record<string, PresenceState>): void {
    for (const [u, p] of Object.entries(users)) if (watched.has(u)) states.set(u, p);
    deps.changed(users);
  }

  async function watchAll(users: readonly string[]): Promise<Record<string, PresenceState>> {
    const out: Record<string, PresenceState> = {};
    for (const part of chunks(users, PRESENCE_USERS_PER_FRAME)) Object.assign(out, await deps.watch(part));
    learned(out);
    return out;
  }

  return {
    async watch(users) {
      const fresh = users.filter((u) => !watched.has(u));
      for (const u of fresh) watched.add(u);
      try {
        return await watchAll(users);
      } catch (err) {
        for (const u of fresh) watched.delete(u);
        throw err;
      }
    },
    unwatch(users) {
      const gone = users.filter((u) => watched.delete(u));
      for (const u of gone) states.delete(u);
      for (const part of chunks(gone, PRESENCE_USERS_PER_FRAME)) deps.write({ type: 'presence.unwatch', users: part });
    },
    pushed: learned,
    of: (user) => states.get(user),
    registered() {
      if (watched.size > 0) void watchAll([...watched]).catch(() => undefined);
    },
  };
}
