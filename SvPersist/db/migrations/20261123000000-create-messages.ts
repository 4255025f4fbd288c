import type { QueryInterface } from 'sequelize';

/**
 * The messages table of PROTOCOL.md's storage contract.
 * - seq: commit-ordered position for sync cursors (stamped under an advisory lock).
 * - conversation_id: "a:b" (sorted) for direct messages; a room id later.
 * - (sender, client_id) unique: the idempotency key survives a Redis loss.
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    CREATE SEQUENCE IF NOT EXISTS messages_seq AS bigint;
    CREATE TABLE messages (
      id              varchar(64)  PRIMARY KEY,
      seq             bigint       NOT NULL,
      sender          varchar(64)  NOT NULL,
      recipient       varchar(64),
      room_id         varchar(64),
      conversation_id varchar(160) NOT NULL,
      client_id       varchar(64)  NOT NULL,
      body            text         NOT NULL,
      created_at      timestamptz  NOT NULL,
      stored_at       timestamptz  NOT NULL DEFAULT now(),
      CONSTRAINT messages_target CHECK ((recipient IS NULL) <> (room_id IS NULL))
    );
    CREATE UNIQUE INDEX messages_seq_idx ON messages (seq);
    CREATE UNIQUE INDEX messages_sender_client_idx ON messages (sender, client_id);
    CREATE INDEX messages_conversation_idx ON messages (conversation_id, id);
    CREATE INDEX messages_recipient_seq_idx ON messages (recipient, seq);
    CREATE INDEX messages_sender_seq_idx ON messages (sender, seq);
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query('DROP TABLE IF EXISTS messages; DROP SEQUENCE IF EXISTS messages_seq;');
}
