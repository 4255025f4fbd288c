import type { QueryInterface } from 'sequelize';

/**
 * The storage cursor moves from an index to a row.
 * - messages_cursor: one row, the seq and created_at of the newest stored
 *   message, written by every insert batch in its own transaction (under the
 *   seq lock, so it never shows a seq whose row is not yet visible).
 * - messages_seq_idx is dropped: the cursor read (max seq) was its only user,
 *   and every stored row paid one more index entry for it. seq stays unique
 *   by its sequence; sync reads use the (recipient, seq) and (sender, seq)
 *   indexes.
 * One implicit transaction: the table is locked first, so no batch lands
 * between reading the newest row and dropping the index.
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    LOCK TABLE messages IN ACCESS EXCLUSIVE MODE;
    CREATE TABLE messages_cursor (
      id         smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
      seq        bigint      NOT NULL,
      created_at timestamptz
    );
    INSERT INTO messages_cursor (id, seq, created_at)
      SELECT 1, coalesce(newest.seq, 0), newest.created_at
      FROM (SELECT 1) AS one
      LEFT JOIN LATERAL (SELECT seq, created_at FROM messages ORDER BY seq DESC LIMIT 1) AS newest ON true;
    DROP INDEX messages_seq_idx;
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    CREATE UNIQUE INDEX IF NOT EXISTS messages_seq_idx ON messages (seq);
    DROP TABLE IF EXISTS messages_cursor;
  `);
}
