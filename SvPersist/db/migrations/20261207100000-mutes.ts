import type { QueryInterface } from 'sequelize';

/**
 * Muted conversations: a user's conversation is muted while `until` (ms since the epoch) is in
 * the future. Muted conversations get no notifications of missed messages; `conversations`
 * shows them muted. Unmuting deletes the row.
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    CREATE TABLE mutes (
      conversation_id varchar(160) COLLATE "C" NOT NULL,
      user_id         varchar(64)  COLLATE "C" NOT NULL,
      until_ms        bigint       NOT NULL,
      PRIMARY KEY (conversation_id, user_id)
    );
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query('DROP TABLE IF EXISTS mutes;');
}
