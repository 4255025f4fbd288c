import type { QueryInterface } from 'sequelize';

/**
 * Partitions of the write path (shared/src/partition.ts): no global lock.
 * - messages.partition: which partition's lock stamped the row's seq (rows stored before
 *   this migration, and rows of a build without partitions, are partition 0). Added with a
 *   constant default, so Postgres records the default and rewrites no row; the table is
 *   locked only for that catalog change, and the migration gives up after lock_timeout
 *   rather than queue every writer behind a long-running read.
 * - messages_cursor: one row per partition (id = partition + 1; partition 0 keeps the row
 *   id 1 a build without partitions moves). seq is the partition's watermark: every row of
 *   the partition with a seq at or below it is committed, every later one gets a larger
 *   seq. moved_at: when the watermark last moved (an idle partition's is moved by
 *   SvPersist's idle tick).
 * - messages_seq stays the one sequence every partition draws from, under its partition's
 *   lock; it must not cache values per session (CACHE 1), or a later commit of a partition
 *   could carry a smaller seq.
 * - notify_state.position: the notifier's position over partitions (a sync cursor's form);
 *   last_seq keeps its smallest component, which is all a build without partitions reads.
 * No index on (partition, seq): every read filters by user, room or seq range first, and
 * partition only within those rows.
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    SET LOCAL lock_timeout = '10s';
    ALTER TABLE messages ADD COLUMN partition smallint NOT NULL DEFAULT 0;
    ALTER TABLE messages_cursor
      DROP CONSTRAINT messages_cursor_id_check,
      ADD COLUMN partition smallint NOT NULL DEFAULT 0,
      ADD COLUMN moved_at timestamptz NOT NULL DEFAULT now(),
      ADD CONSTRAINT messages_cursor_partition CHECK (partition >= 0 AND partition < 64 AND id = partition + 1);
    ALTER SEQUENCE messages_seq CACHE 1;
    ALTER TABLE notify_state ADD COLUMN position text;
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    ALTER TABLE notify_state DROP COLUMN IF EXISTS position;
    DELETE FROM messages_cursor WHERE id <> 1;
    ALTER TABLE messages_cursor
      DROP CONSTRAINT IF EXISTS messages_cursor_partition,
      DROP COLUMN IF EXISTS moved_at,
      DROP COLUMN IF EXISTS partition,
      ADD CONSTRAINT messages_cursor_id_check CHECK (id = 1);
    ALTER TABLE messages DROP COLUMN IF EXISTS partition;
  `);
}
