/**
 * Presence for the connections on this instance that watch users. A user is
 * online while an instance with a live lease claims it in SvDiscover: the
 * claims, leases and change notifications that route messages are the
 * registry, and SvDiscover records when a user's last claim went (lastSeen).
 *
 * What a watcher is told is repaired, never trusted: a change notification
 * marks its users to be asked again, an instance that went marks every online
 * watched user, and every reconcileMs every watched user is asked again, so a
 * lost notification or a crashed instance (whose lease lapses without a
 * notification) is corrected within that time. Changes are pushed batched:
 * each watching connection gets at most one `presence` frame per flush
 * (flushMs), however many users changed, so a reconnect storm of 10,000 users
 * costs a watcher a few frames, not 10,000.
 */
import { DomainError, PRESENCE_USERS_PER_CONNECTION, errorMessage, createLogThrottle, type Logger, type PresenceState, type UserPresence } from '@simplechat/shared';
import type { Session } from './session';

export interface PresenceMetrics {
  /** users asked about at SvDiscover (changes and reconciliation) */
  presenceChecked(users: number): void;
  /** state changes pushed, and the frames that carried them */
  presencePushed(changes: number, frames: number): void;
}

export interface PresenceDeps {
  /** asks SvDiscover now */
  fetch(users: readonly string[]): Promise<Map<string, UserPresence>>;
  /** PRESENCE_WATCH=shared: the users of `others` that share a conversation with `user`; absent: anyone may be watched */
  sharedWith?(user: string, others: readonly string[]): Promise<string[]>;
  reconcileMs: number;
  flushMs: number;
  now?: () => number;
  log: Logger;
  metrics?: PresenceMetrics;
}

export interface Presence {
  /** starts watching (all or nothing: the limit and the policy are checked first); resolves with each user's state */
  watch(session: Session, users: readonly string[]): Promise<Record<string, PresenceState>>;
  unwatch(session: Session, users: readonly string[]): void;
  /** the session closed */
  drop(session: Session): void;
  /** SvDiscover said these users' claims changed */
  changed(users: readonly string[]): void;
  /** anything may have changed: an instance went, or notifications restarted */
  changedAll(): void;
  /** distinct users watched on this instance */
  size(): number;
  close(): void;
}

interface Watch {
  sessions: Set<Session>;
  /** undefined until first asked */
  state: PresenceState | undefined;
}

const FAILURE_LOG_INTERVAL_MS = 60_000;

export function createPresence(deps: PresenceDeps): Presence {
  const log = deps.log.child({ component: 'presence' });
  const clock = deps.now ?? Date.now;
  const failures = createLogThrottle(FAILURE_LOG_INTERVAL_MS);
  const watched = new Map<string, Watch>();
  const bySession = new Map<Session, Set<string>>();
  /** users to ask again at the next flush */
  const dirty = new Set<string>();
  /** changes waiting for the next flush, per watching connection */
  const pending = new Map<Session, Record<string, PresenceState>>();
  let nextReconcile = clock() + deps.reconcileMs;
  let running = false;
  let closed = false;

  /** The state to show for a fresh answer, given what was shown before. */
  function next(before: PresenceState | undefined, answer: UserPresence): PresenceState {
    if (answer.online) return { online: true };
    if (answer.lastSeen !== undefined) return { online: false, lastSeen: answer.lastSeen };
    // Went offline without SvDiscover knowing when (an instance crashed, its lease lapsed): now.
    if (before?.online) return { online: false, lastSeen: clock() };
    return before ?? { online: false };
  }

  function apply(answers: Map<string, UserPresence>): void {
    for (const [user, answer] of answers) {
      const w = watched.get(user);
      if (!w) continue;
      const before = w.state;
      const after = next(before, answer);
      w.state = after;
      if (before === undefined || before.online === after.online) continue;
      for (const s of w.sessions) {
        let changes = pending.get(s);
        if (!changes) pending.set(s, (changes = {}));
        changes[user] = after;
      }
    }
  }

  function flushPending(): void {
    if (pending.size === 0) return;
    let changes = 0;
    for (const [s, users] of pending) {
      changes += Object.keys(users).length;
      s.send({ type: 'presence', users });
    }
    deps.metrics?.presencePushed(changes, pending.size);
    pending.clear();
  }

  async function tick(): Promise<void> {
    if (clock() >= nextReconcile) {
      nextReconcile = clock() + deps.reconcileMs;
      for (const u of watched.keys()) dirty.add(u);
    }
    if (dirty.size > 0) {
      const users = [...dirty];
      dirty.clear();
      try {
        deps.metrics?.presenceChecked(users.length);
        apply(await deps.fetch(users));
        const failed = failures.end();
        if (failed > 0) log.info({ failed }, 'presence checks at SvDiscover work again');
      } catch (err) {
        // Asked again at the next flush; what watchers were shown stays until then.
        for (const u of users) if (watched.has(u)) dirty.add(u);
        if (failures.shouldLog()) log.warn({ failures: failures.count, err: errorMessage(err) }, 'presence check at SvDiscover failed; retrying at the next flush');
      }
    }
    flushPending();
  }

  const timer = setInterval(() => {
    if (running || closed) return;
    running = true;
    void tick().finally(() => (running = false));
  }, deps.flushMs);
  timer.unref();

  function forget(session: Session, user: string): void {
    const w = watched.get(user);
    if (!w) return;
    w.sessions.delete(session);
    if (w.sessions.size === 0) {
      watched.delete(user);
      dirty.delete(user);
    }
  }

  return {
    async watch(session, users) {
      const mine = bySession.get(session) ?? new Set<string>();
      const added = [...new Set(users)].filter((u) => !mine.has(u));
      if (mine.size + added.length > PRESENCE_USERS_PER_CONNECTION) {
        throw new DomainError('too_large', `presence.watch: this connection would watch ${mine.size + added.length} users (limit ${PRESENCE_USERS_PER_CONNECTION}); unwatch some first`);
      }
      const me = session.userId as string;
      if (deps.sharedWith && added.length > 0) {
        const others = added.filter((u) => u !== me);
        const allowed = new Set(others.length > 0 ? await deps.sharedWith(me, others) : []);
        const refused = others.filter((u) => !allowed.has(u));
        if (refused.length > 0) throw new DomainError('forbidden', `presence.watch: you share no conversation with ${refused.slice(0, 10).join(', ')}${refused.length > 10 ? ` and ${refused.length - 10} more` : ''} (PRESENCE_WATCH=shared); nothing was watched`);
      }
      if (session.closed) return {};
      // Registered before asking: a change notified while the answer is on its way marks them dirty.
      for (const u of added) {
        mine.add(u);
        let w = watched.get(u);
        if (!w) watched.set(u, (w = { sessions: new Set(), state: undefined }));
        w.sessions.add(session);
      }
      bySession.set(session, mine);
      const unknown = [...new Set(users)].filter((u) => watched.get(u)?.state === undefined);
      if (unknown.length > 0) {
        try {
          deps.metrics?.presenceChecked(unknown.length);
          const answers = await deps.fetch(unknown);
          for (const [u, answer] of answers) {
            const w = watched.get(u);
            if (w && w.state === undefined) w.state = next(undefined, answer);
          }
        } catch (err) {
          for (const u of added) forget(session, u);
          for (const u of added) mine.delete(u);
          throw err;
        }
      }
      const states: Record<string, PresenceState> = {};
      for (const u of users) states[u] = watched.get(u)?.state ?? { online: false };
      // The answer carries the current state: a change queued before it would repeat it.
      const queued = pending.get(session);
      if (queued) for (const u of users) delete queued[u];
      return states;
    },
    unwatch(session, users) {
      const mine = bySession.get(session);
      if (!mine) return;
      const queued = pending.get(session);
      for (const u of users) {
        if (!mine.delete(u)) continue;
        forget(session, u);
        if (queued) delete queued[u];
      }
      if (mine.size === 0) bySession.delete(session);
    },
    drop(session) {
      const mine = bySession.get(session);
      pending.delete(session);
      if (!mine) return;
      for (const u of mine) forget(session, u);
      bySession.delete(session);
    },
    changed(users) {
      for (const u of users) if (watched.has(u)) dirty.add(u);
    },
    changedAll() {
      for (const u of watched.keys()) dirty.add(u);
    },
    size: () => watched.size,
    close() {
      closed = true;
      clearInterval(timer);
    },
  };
}
