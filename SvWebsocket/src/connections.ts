/** Registered sessions on this instance, by user. Frames are serialised once by the caller and sent as strings. */
import type { Session } from './session';

export interface ConnectionRegistry {
  add(session: Session): void;
  /** returns true when it was the user's last connection here */
  remove(session: Session): boolean;
  of(userId: string): ReadonlySet<Session> | undefined;
  has(userId: string): boolean;
  users(): string[];
  all(): Iterable<Session>;
  size(): number;
  /** sends one serialised frame to every connection of these users except `exclude`; returns how many got it */
  deliver(users: readonly string[], frame: string, exclude?: Session): number;
}

export function createConnectionRegistry(): ConnectionRegistry {
  const byUser = new Map<string, Set<Session>>();
  let total = 0;

  return {
    add(session) {
      if (!session.userId) throw new Error('registry.add needs a registered connection');
      let set = byUser.get(session.userId);
      if (!set) byUser.set(session.userId, (set = new Set()));
      if (!set.has(session)) total++;
      set.add(session);
    },
    remove(session) {
      if (!session.userId) return false;
      const set = byUser.get(session.userId);
      if (!set || !set.delete(session)) return false;
      total--;
      if (set.size > 0) return false;
      byUser.delete(session.userId);
      return true;
    },
    of: (userId) => byUser.get(userId),
    has: (userId) => byUser.has(userId),
    users: () => [...byUser.keys()],
    *all() {
      for (const set of byUser.values()) yield* set;
    },
    size: () => total,
    deliver(users, frame, exclude) {
      let n = 0;
      for (const userId of users) {
        const set = byUser.get(userId);
        if (!set) continue;
        for (const session of set) {
          if (session === exclude || session.closed) continue;
          session.deliver(frame);
          n++;
        }
      }
      return n;
    },
  };
}
