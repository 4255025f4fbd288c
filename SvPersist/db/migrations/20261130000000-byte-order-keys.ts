import type { QueryInterface } from 'sequelize';

/**
 * The key columns of messages compare bytes (COLLATE "C") instead of the
 * database's locale.
 * - Every stored row adds an entry to five indexes, each found by comparing
 *   keys: ids, user ids, conversation keys and client ids. With a locale such
 *   as en_US.UTF-8 each comparison goes through the locale's collation rules;
 *   byte order skips them. Measured: Postgres CPU per stored row of the
 *   writer's statement 37.7 -> 28.3 µs in an en_US.UTF-8 database, 30.0 ->
 *   28.0 µs in a C.UTF-8 one.
 * - No read changes meaning: ids and user ids are only compared for equality,
 *   except msgIds, ULIDs whose order is their byte order by design (history
 *   pages by `id`).
 * - The column data is not rewritten; the indexes are rebuilt, holding an
 *   exclusive lock on messages meanwhile (see docs/OPERATIONS.md, Upgrading).
 */
const COLUMNS: readonly (readonly [name: string, type: string])[] = [
  ['id', 'varchar(64)'],
  ['sender', 'varchar(64)'],
  ['recipient', 'varchar(64)'],
  ['room_id', 'varchar(64)'],
  ['conversation_id', 'varchar(160)'],
  ['client_id', 'varchar(64)'],
];

const alterTo = (collation: string) =>
  `ALTER TABLE messages ${COLUMNS.map(([name, type]) => `ALTER COLUMN ${name} TYPE ${type} COLLATE ${collation}`).join(', ')}`;

export async function up(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(alterTo('"C"'));
}

export async function down(queryInterface: QueryInterface): Promise<void> {
  await queryInterface.sequelize.query(alterTo('"default"'));
}
