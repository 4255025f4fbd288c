/**
 * The typing relay's limit: at most TYPING_PER_SEC typing frames per user and
 * conversation in any second on this instance; the rest are dropped. Each
 * (user, conversation) keeps the times of its last relayed frames; entries
 * idle for a second are forgotten by a periodic sweep.
 */
import { TYPING_PER_SEC } from '@simplechat/shared';

const WINDOW_MS = 1000;
const SWEEP_MS = 10_000;

export interface TypingGate {
  /** true when a typing frame of this user into this conversation may be relayed now (and counts it) */
  allow(userId: string, conversation: string): boolean;
  close(): void;
}

export function createTypingGate(now: () => number = Date.now): TypingGate {
  /** relay times in the last window, oldest first, by user and conversation */
  const recent = new Map<string, number[]>();
  const sweeper = setInterval(() => {
    const t = now();
    for (const [k, times] of recent) if (t - (times[times.length - 1] ?? 0) >= WINDOW_MS) recent.delete(k);
  }, SWEEP_MS);
  sweeper.unref();
  return {
    allow(userId, conversation) {
      const key = `${userId}\n${conversation}`;
      const t = now();
      const times = recent.get(key) ?? [];
      while (times.length > 0 && t - (times[0] as number) >= WINDOW_MS) times.shift();
      if (times.length >= TYPING_PER_SEC) return false;
      times.push(t);
      recent.set(key, times);
      return true;
    },
    close: () => clearInterval(sweeper),
  };
}
