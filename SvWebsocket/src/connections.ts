/** Connections on this instance, by user. Frames are serialised once by the caller and sent as strings. */
import type { WebSocket } from 'ws';
import { CloseCode } from '@simplechat/shared';
import type { FrameMetrics } from './metrics';

export interface Connection {
  readonly id: string;
  readonly ws: WebSocket;
  readonly remote: string;
  userId: string | undefined;
  /** frames delivered while registering wait here until `registered` is sent */
  pending: string[] | null;
  closed: boolean;
}

export interface ConnectionRegistry {
  add(conn: Connection): void;
  /** returns true when it was the user's last connection here */
  remove(conn: Connection): boolean;
  of(userId: string): ReadonlySet<Connection> | undefined;
  has(userId: string): boolean;
  users(): string[];
  all(): Iterable<Connection>;
  size(): number;
  /** sends one serialised frame to every connection of these users except `exclude`; returns how many got it */
  deliver(users: readonly string[], frame: string, exclude?: Connection): number;
  send(conn: Connection, frame: string): void;
}

/**
 * How long a slow client, once cut off, has to read what is buffered for it and then the 1013
 * close frame behind that, before its socket is dropped. ws's own close handshake waits as long.
 * What it holds meanwhile is bounded by the buffer limit: nothing is added after the cut.
 */
const SLOW_CLIENT_CLOSE_GRACE_MS = 30_000;

export function createConnectionRegistry(deps: { maxBufferedBytes: number; onSlowClient?: (conn: Connection) => void; metrics?: FrameMetrics }): ConnectionRegistry {
  const byUser = new Map<string, Set<Connection>>();
  let total = 0;

  function send(conn: Connection, frame: string): void {
    if (conn.closed) return;
    if (conn.pending) {
      conn.pending.push(frame);
      return;
    }
    if (conn.ws.bufferedAmount > deps.maxBufferedBytes) {
      // A client that does not read would make us buffer without bound: cut it off; it catches up with sync.
      // Nothing more is queued for it; the close frame follows what is buffered already.
      conn.closed = true;
      deps.onSlowClient?.(conn);
      conn.ws.close(CloseCode.TRY_AGAIN_LATER, 'send buffer full: reconnect and sync');
      setTimeout(() => conn.ws.terminate(), SLOW_CLIENT_CLOSE_GRACE_MS).unref();
      return;
    }
    conn.ws.send(frame);
    deps.metrics?.frameSent(frame);
  }

  return {
    add(conn) {
      if (!conn.userId) throw new Error('registry.add needs a registered connection');
      let set = byUser.get(conn.userId);
      if (!set) byUser.set(conn.userId, (set = new Set()));
      if (!set.has(conn)) total++;
      set.add(conn);
    },
    remove(conn) {
      if (!conn.userId) return false;
      const set = byUser.get(conn.userId);
      if (!set || !set.delete(conn)) return false;
      total--;
      if (set.size > 0) return false;
      byUser.delete(conn.userId);
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
        for (const conn of set) {
          if (conn === exclude || conn.closed) continue;
          send(conn, frame);
          n++;
        }
      }
      return n;
    },
    send,
  };
}
