import type { QueryInterface } from 'sequelize';

/**
 * Notifications of missed messages (PROTOCOL.md v1.2; SvPersist's missed.ts).
 * - notify_state: one row, the last messages.seq the notifier has examined. It starts at the
 *   newest stored message (messages_cursor: no scan), so the history before this migration is
 *   never notified (empty-position rows past it are skipped by the notifier anyway).
 * - notify_outbox: events decided but not yet handed to the broker, with `body` the exact JSON
 *   the webhook receives and `first_ms` the ack ts of the event's earliest message. Written in
 *   the transaction that moves notify_state, deleted once the broker confirmed the event.
 * - messages_seq_brin_idx: the notifier reads the rows past its cursor in seq order. Rows are
 *   appended in seq order (the seq lock), so a BRIN index finds that tail for a few pages of
 *   index in all and nearly nothing per stored row, where a btree would cost every row an entry.
 * - room_members_room_idx: the members of a room at a position, former ones included (a member
 *   who left after a message was sent still missed it).
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    CREATE TABLE notify_state (
      id         smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
      last_seq   bigint      NOT NULL,
      updated_at timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO notify_state (id, last_seq) SELECT 1, coalesce((SELECT seq FROM messages_cursor WHERE id = 1), 0);
    CREATE TABLE notify_outbox (
      event_id   varchar(32) COLLATE "C" PRIMARY KEY,
      recipient  varchar(64) COLLATE "C" NOT NULL,
      body       text        NOT NULL,
      first_ms   bigint      NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX notify_outbox_created_idx ON notify_outbox (created_at, event_id);
    CREATE INDEX messages_seq_brin_idx ON messages USING brin (seq) WITH (pages_per_range = 32, autosummarize = on);
    CREATE INDEX room_members_room_idx ON room_members (room_id, from_position) INCLUDE (user_id, to_position);
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    DROP INDEX IF EXISTS room_members_room_idx;
    DROP INDEX IF EXISTS messages_seq_brin_idx;
    DROP TABLE IF EXISTS notify_outbox;
    DROP TABLE IF EXISTS notify_state;
  `);
}
