/**
 * The write path of one SvPersist: a writer per partition (each its own
 * connection, channel and consumer, so partitions are stored in parallel and
 * fail over apart), seen from the outside as one writer: counters add up, it
 * is connected and ready when every partition is, idle when every partition is.
 */
import type { Writer, WriterDeps, WriterStats } from './writer';
import { createWriter } from './writer';

export interface PartitionWriters extends Omit<Writer, 'deliveredSince' | 'stepBack'> {
  /** by partition number */
  readonly partitions: readonly Writer[];
}

export type PartitionWritersDeps = Omit<WriterDeps, 'partition'>;

export function createPartitionWriters(deps: PartitionWritersDeps, create: (deps: WriterDeps) => Writer = createWriter): PartitionWriters {
  const partitions = deps.topology.queues.map((_, partition) => create({ ...deps, partition }));
  return {
    partitions,
    isConnected: () => partitions.every((w) => w.isConnected()),
    ready: async () => {
      await Promise.all(partitions.map((w) => w.ready()));
    },
    stats: () => sumStats(partitions.map((w) => w.stats())),
    // With several partitions, storage is as far as its slowest partition.
    progress: () => {
      const all = partitions.map((w) => w.progress());
      return { idle: all.every((p) => p.idle), storedThrough: Math.min(...all.map((p) => p.storedThrough)) };
    },
    close: async () => {
      await Promise.all(partitions.map((w) => w.close()));
    },
  };
}

export function sumStats(all: readonly WriterStats[]): WriterStats {
  const total: WriterStats = { deliveries: 0, batches: 0, inserts: 0, messages: 0, rowsInserted: 0, deadLettered: 0, retries: 0 };
  for (const s of all) for (const k of Object.keys(total) as (keyof WriterStats)[]) total[k] += s[k];
  return total;
}

/** One queue as the notification decision sees it: this process's writer of it, and what is ready in it. */
export interface QueueProgress {
  progress: { idle: boolean; storedThrough: number };
  /** deliveries ready in the queue; undefined when the broker could not be asked */
  ready: number | undefined;
}

/**
 * Until when everything accepted is stored (ms, the gateways' clocks): each queue is caught up
 * to now when its writer holds nothing and nothing is ready in it, else to what it stored last;
 * storage is caught up as far as the slowest queue. A partition this process only stands by
 * for has an idle writer here; the other SvPersist's unacked batch is not seen here, but in
 * that instance's own report (storage-progress.ts).
 */
export function storedUntil(queues: readonly QueueProgress[], now: number): number {
  let until = now;
  for (const q of queues) {
    const caughtUp = q.progress.idle && q.ready === 0 ? now : q.progress.storedThrough;
    if (caughtUp < until) until = caughtUp;
  }
  return until;
}
