import type { QueryInterface } from 'sequelize';

/**
 * Receipts and the conversation list.
 * - marks: each user's delivered and read marks per conversation (positions; they only grow).
 *   Keyed by conversation first, so a room's readers are one index range.
 * - A user's direct conversations are found in conversation_positions (a row per conversation
 *   that accepted a message; "a:b" keys): by the key's prefix for the first user (the primary
 *   key) and by this index for the second, so the list costs no write on the message path.
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    CREATE TABLE marks (
      conversation_id varchar(160) COLLATE "C" NOT NULL,
      user_id         varchar(64)  COLLATE "C" NOT NULL,
      delivered_up_to bigint       NOT NULL DEFAULT 0,
      read_up_to      bigint       NOT NULL DEFAULT 0,
      updated_at      timestamptz  NOT NULL DEFAULT now(),
      PRIMARY KEY (conversation_id, user_id)
    );
    CREATE INDEX conversation_positions_second_user_idx ON conversation_positions ((split_part(conversation_id, ':', 2)) COLLATE "C") WHERE strpos(conversation_id, ':') > 0;
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    DROP INDEX IF EXISTS conversation_positions_second_user_idx;
    DROP TABLE IF EXISTS marks;
  `);
}
