/**
 * Moves the watermark of idle partitions. A partition's watermark (messages_cursor) moves
 * with each of its batches; one that stores nothing for a while (little traffic, or left
 * behind by a smaller QUEUE_PARTITIONS) would hold every position's component for it back,
 * and each sync would read more rows past the smallest component only to drop them.
 *
 * Every tick, each partition whose watermark has not moved for `idleMs` is taken without
 * waiting (a partition busy storing is skipped: its batches move it), and, holding its lock,
 * its watermark is raised to the sequence's current value: no batch of it is in flight, so
 * every seq handed out up to there that is the partition's is committed, and its next batch
 * draws larger ones. That is the transaction an empty batch would be.
 */
import type { Sequelize, Transaction } from 'sequelize';
import { QueryTypes } from 'sequelize';
import { errorMessage, type Logger } from '@simplechat/shared';
import { partitionLockSql } from './store';

export interface IdlePartitionsDeps {
  sequelize: Sequelize;
  log: Logger;
  /** a partition counts as idle once its watermark has not moved for this long (default 1000) */
  idleMs?: number;
  /** time between ticks (default 1000) */
  intervalMs?: number;
}

export interface IdlePartitions {
  /** one tick; resolves with the partitions moved */
  tick(): Promise<number>;
  close(): Promise<void>;
}

// Statement 1 takes the locks; statement 2 (a later snapshot) reads the sequence and moves the
// watermarks: the sequence is read only once no batch of those partitions can be in flight.
const TAKE_SQL = `
  WITH idle AS MATERIALIZED (SELECT partition FROM messages_cursor WHERE moved_at < now() - $1::int8 * interval '1 millisecond')
  SELECT partition FROM idle WHERE ${partitionLockSql('partition', { try: true })}`;
const MOVE_SQL = `
  UPDATE messages_cursor c SET seq = greatest(c.seq, (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM messages_seq)), moved_at = now()
  WHERE c.partition = ANY($1::int2[])
  RETURNING c.partition`;

export function createIdlePartitions(deps: IdlePartitionsDeps): IdlePartitions {
  const log = deps.log.child({ component: 'idle-partitions' });
  const idleMs = deps.idleMs ?? 1000;
  let running: Promise<number> | undefined;
  let isClosed = false;

  async function tickOnce(): Promise<number> {
    return deps.sequelize.transaction(async (transaction: Transaction) => {
      const taken = await deps.sequelize.query<{ partition: number }>(TAKE_SQL, { bind: [idleMs], type: QueryTypes.SELECT, transaction });
      if (taken.length === 0) return 0;
      const moved = await deps.sequelize.query<{ partition: number }>(MOVE_SQL, { bind: [taken.map((t) => t.partition)], type: QueryTypes.SELECT, transaction });
      return moved.length;
    });
  }

  function tick(): Promise<number> {
    running ??= tickOnce().finally(() => (running = undefined));
    return running;
  }

  const timer = setInterval(() => {
    if (isClosed) return;
    tick().catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'idle partitions not moved (storage unavailable); the next tick does it'));
  }, deps.intervalMs ?? 1000);
  timer.unref();

  return {
    tick,
    async close() {
      isClosed = true;
      clearInterval(timer);
      await running?.catch(() => undefined);
    },
  };
}
