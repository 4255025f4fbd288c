/**
 * Shutdown in reverse start order: a service adds each component as it
 * starts, and close() closes them last-added first, each awaited. A failing
 * close is logged and the rest still close, so one stuck client does not
 * keep the others' sockets open.
 */
import { withDeadline } from './metrics';
import type { Logger } from './log';

export interface Lifecycle {
  /** Registers what was just started. Added while closing, it is closed at once. */
  add(name: string, close: () => unknown): void;
  readonly isClosing: boolean;
  /**
   * Closes every component, last added first; idempotent. With deadlineMs, a close still
   * running then is named in a warning and left, and the rest are started without waiting.
   */
  close(deadlineMs?: number): Promise<void>;
}

interface Component {
  name: string;
  close: () => unknown;
}

/** The `closing ??= (async () => ...)()` idiom as a wrapper: the first call runs fn, every call gets its promise. */
export function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined;
  return () => (result ??= fn());
}

export function createLifecycle(log: Logger): Lifecycle {
  const components: Component[] = [];
  let closing: Promise<void> | undefined;
  let isDone = false;

  async function closeOne(c: Component): Promise<void> {
    const startedAt = performance.now();
    try {
      await c.close();
      log.debug({ component: c.name, ms: Math.round(performance.now() - startedAt) }, 'closed');
    } catch (err) {
      log.warn({ component: c.name, err }, `closing the ${c.name} failed`);
    }
  }

  async function closeAll(deadlineMs: number | undefined): Promise<void> {
    const deadline = deadlineMs === undefined ? Infinity : performance.now() + deadlineMs;
    // pop(): what is added while closing is closed next, before what started earlier
    for (let c = components.pop(); c; c = components.pop()) {
      const left = deadline - performance.now();
      const done = closeOne(c);
      if (left === Infinity) await done;
      else if (left <= 0) continue;
      else if (!(await withDeadline(done.then(() => true), left, false))) log.warn({ component: c.name, deadlineMs }, `the ${c.name} is still closing at the shutdown deadline; not waiting for it`);
    }
    isDone = true;
  }

  return {
    add(name, close) {
      const c = { name, close };
      if (isDone) void closeOne(c);
      else components.push(c);
    },
    get isClosing() {
      return closing !== undefined;
    },
    close(deadlineMs) {
      closing ??= closeAll(deadlineMs);
      return closing;
    },
  };
}
