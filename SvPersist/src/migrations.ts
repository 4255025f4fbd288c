/**
 * The migrations this build's queries need, in order, as sequelize-cli records them in
 * "SequelizeMeta". A test keeps the list equal to SvPersist/db/migrations, so adding a
 * migration without naming it here fails the tests; the running service needs no
 * migration files (the production image carries none).
 */
export const MIGRATIONS: readonly string[] = ['20261123000000-create-messages.ts', '20261129000000-cursor-row.ts', '20261130000000-byte-order-keys.ts', '20261206000000-positions.ts', '20261206100000-rooms.ts', '20261207000000-receipts.ts', '20261207100000-mutes.ts', '20261208000000-notifications.ts', '20261210000000-partitions.ts', '20261211000000-storage-progress.ts'];
