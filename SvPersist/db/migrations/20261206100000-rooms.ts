import type { QueryInterface } from 'sequelize';

/**
 * Rooms: group conversations whose messages are stored once (messages.room_id).
 * - rooms.version counts changes (membership, owner), so a cached copy can tell it is stale.
 * - room_members holds membership as intervals of room positions: a member sees the
 *   messages with from_position < position <= to_position (to_position NULL while a
 *   member). Leaving and rejoining adds an interval; at most one is open per user.
 * - messages_room_seq_idx serves sync's room branch; partial, so direct rows pay nothing.
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    CREATE TABLE rooms (
      id         varchar(64) COLLATE "C" PRIMARY KEY,
      name       text        NOT NULL,
      owner      varchar(64) COLLATE "C",
      version    bigint      NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      ended_at   timestamptz
    );
    CREATE TABLE room_members (
      room_id       varchar(64) COLLATE "C" NOT NULL REFERENCES rooms (id),
      user_id       varchar(64) COLLATE "C" NOT NULL,
      joined_at     timestamptz NOT NULL,
      from_position bigint      NOT NULL,
      to_position   bigint,
      CONSTRAINT room_members_interval CHECK (to_position IS NULL OR to_position >= from_position)
    );
    -- current members of a room (and at most one open interval per user)
    CREATE UNIQUE INDEX room_members_current_idx ON room_members (room_id, user_id) WHERE to_position IS NULL;
    -- current rooms of a user, paged by room id
    CREATE INDEX room_members_user_current_idx ON room_members (user_id, room_id) WHERE to_position IS NULL;
    -- every interval of a user (sync)
    CREATE INDEX room_members_user_intervals_idx ON room_members (user_id, room_id, from_position) INCLUDE (to_position);
    CREATE INDEX messages_room_seq_idx ON messages (room_id, seq) WHERE room_id IS NOT NULL;
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    DROP INDEX IF EXISTS messages_room_seq_idx;
    DROP TABLE IF EXISTS room_members;
    DROP TABLE IF EXISTS rooms;
  `);
}
