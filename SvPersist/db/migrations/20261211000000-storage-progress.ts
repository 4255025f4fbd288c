import type { QueryInterface } from 'sequelize';

/**
 * storage_progress: each running SvPersist's word on how far storage got, as its writers see
 * their partitions (SvPersist/src/storage-progress.ts): everything accepted until
 * caught_up_ms (ms, SvPersist's clock) that this instance has been handed is stored.
 * reported_at is Postgres's clock, so that freshness does not depend on the instances' clocks.
 * A row is rewritten every second and deleted when its instance stops; one left by an instance
 * that died is ignored once it is stale.
 */
export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(`
    CREATE TABLE storage_progress (
      instance_id  varchar(200) COLLATE "C" PRIMARY KEY,
      caught_up_ms bigint      NOT NULL,
      reported_at  timestamptz NOT NULL DEFAULT now()
    );
  `);
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query('DROP TABLE IF EXISTS storage_progress');
}
