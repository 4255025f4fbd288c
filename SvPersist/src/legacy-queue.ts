/**
 * The move from the single classic queue of before partitions
 * (`<prefix>messages`): at start SvPersist asks the broker passively whether
 * that queue exists; if it holds messages, a writer consumes it until it is
 * empty (each message stored under its conversation's partition), then stops.
 * Nothing declares the queue, so a deployment that never had it never gets it.
 * Older gateways publish to it: stop them before, so that it stays empty.
 */
import type { Logger } from '@simplechat/shared';
import type { Writer, WriterDeps } from './writer';
import { createWriter } from './writer';
import type { QueueMonitor } from './queue-monitor';
import type { QueueProgress } from './writers';

export interface LegacyDrain {
  /** the drain under way, as the notification decision sees it; undefined when there is none */
  progress(): Promise<QueueProgress | undefined>;
  /** resolves once the queue was found absent or empty, or drained */
  done(): Promise<void>;
  close(): Promise<void>;
}

export interface LegacyDrainDeps {
  writer: Omit<WriterDeps, 'partition'>;
  monitor: Pick<QueueMonitor, 'count'>;
  log: Logger;
  /** how often the queue's depth is asked while draining (and while the broker cannot be asked at start) */
  pollMs?: number;
}

export function createLegacyDrain(deps: LegacyDrainDeps): LegacyDrain {
  const queue = deps.writer.topology.legacyQueue;
  const log = deps.log.child({ component: 'legacy-queue', queue });
  const pollMs = deps.pollMs ?? 1000;
  let writer: Writer | undefined;
  let isClosed = false;
  let timer: NodeJS.Timeout | undefined;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  let stored = 0;

  const later = (fn: () => Promise<void>) => {
    if (!isClosed) timer = setTimeout(() => void fn(), pollMs);
  };

  async function look(): Promise<void> {
    const count = await deps.monitor.count(queue);
    if (isClosed) return;
    if (count === undefined) return later(look);
    if (count === 'absent' || count === 0) {
      if (count === 0) log.info('the classic queue of before partitions is empty; delete it once no older gateway publishes to it (docs/OPERATIONS.md#moving-from-the-classic-queue)');
      finish();
      return;
    }
    log.warn({ messages: count }, 'draining the classic queue of before partitions into storage; stop the older gateways so that it empties (docs/OPERATIONS.md#moving-from-the-classic-queue)');
    writer = createWriter({ ...deps.writer, partition: 'legacy' });
    later(watch);
  }

  async function watch(): Promise<void> {
    const w = writer;
    if (!w || isClosed) return;
    const count = await deps.monitor.count(queue);
    if (isClosed) return;
    if ((count === 0 || count === 'absent') && w.progress().idle) {
      stored = w.stats().messages;
      writer = undefined;
      await w.close();
      log.info({ messages: stored }, 'the classic queue of before partitions is drained; delete it once no older gateway publishes to it');
      finish();
      return;
    }
    later(watch);
  }

  void look();

  return {
    async progress() {
      const w = writer;
      if (!w) return undefined;
      const ready = await deps.monitor.count(queue);
      return { progress: w.progress(), ready: typeof ready === 'number' ? ready : ready === 'absent' ? 0 : undefined };
    },
    done: () => finished,
    async close() {
      isClosed = true;
      if (timer) clearTimeout(timer);
      const w = writer;
      writer = undefined;
      await w?.close();
      finish();
    },
  };
}
