import type { QueryInterface } from 'sequelize';

/**
 * Positions: every message's place in its conversation (`seq` on the wire).
 * - messages.position, unique per conversation: storage never holds two
 *   messages at one position. Rows stored before positions existed are
 *   numbered in storage order.
 * - The unique (conversation_id, position) index replaces (conversation_id, id):
 *   history pages by position, so a row still costs five index entries.
 * - conversation_positions: per conversation, the highest position ever
 *   handed out to the gateways (they take blocks of it and count within a
 *   block in Redis). A Redis that forgot its counters starts again above it,
 *   so no position is handed out twice.
 * One implicit transaction, with messages locked: no batch lands meanwhile.
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    LOCK TABLE messages IN ACCESS EXCLUSIVE MODE;
    ALTER TABLE messages ADD COLUMN position bigint;
    UPDATE messages SET position = numbered.position
      FROM (SELECT id, row_number() OVER (PARTITION BY conversation_id ORDER BY seq) AS position FROM messages) AS numbered
      WHERE messages.id = numbered.id;
    ALTER TABLE messages ALTER COLUMN position SET NOT NULL;
    CREATE UNIQUE INDEX messages_conversation_position_idx ON messages (conversation_id, position);
    DROP INDEX messages_conversation_idx;
    CREATE TABLE conversation_positions (
      conversation_id varchar(160) COLLATE "C" PRIMARY KEY,
      reserved        bigint       NOT NULL
    );
    INSERT INTO conversation_positions (conversation_id, reserved)
      SELECT conversation_id, max(position) FROM messages GROUP BY conversation_id;
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    DROP TABLE IF EXISTS conversation_positions;
    CREATE INDEX messages_conversation_idx ON messages (conversation_id, id);
    DROP INDEX IF EXISTS messages_conversation_position_idx;
    ALTER TABLE messages DROP COLUMN IF EXISTS position;
  `);
}
