import { describe, expect, it } from 'vitest';
import { isolation } from '../../test/helpers';
import { createDatabase, dropDatabase, migrate } from '../../scripts/lib/db';
import { uniqueTag, withDb } from './support';

const iso = isolation();

interface Schema {
  table: boolean;
  sequence: boolean;
  indexes: string[];
  columns: string[];
}

async function schemaOf(databaseUrl: string): Promise<Schema> {
  return withDb(databaseUrl, async (db) => {
    const table = await db.query(`SELECT to_regclass('public.messages') IS NOT NULL AS ok`);
    const sequence = await db.query(`SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'messages_seq' AND relkind = 'S') AS ok`);
    const indexes = await db.query<{ indexname: string }>(`SELECT indexname FROM pg_indexes WHERE tablename = 'messages' ORDER BY indexname`);
    const columns = await db.query<{ column_name: string }>(`SELECT column_name FROM information_schema.columns WHERE table_name = 'messages' ORDER BY ordinal_position`);
    return {
      table: table.rows[0].ok as boolean,
      sequence: sequence.rows[0].ok as boolean,
      indexes: indexes.rows.map((r) => r.indexname),
      columns: columns.rows.map((r) => r.column_name),
    };
  });
}

const EXPECTED: Schema = {
  table: true,
  sequence: true,
  indexes: ['messages_conversation_idx', 'messages_pkey', 'messages_recipient_seq_idx', 'messages_sender_client_idx', 'messages_sender_seq_idx', 'messages_seq_idx'],
  columns: ['id', 'seq', 'sender', 'recipient', 'room_id', 'conversation_id', 'client_id', 'body', 'created_at', 'stored_at'],
};

describe('migrations', () => {
  it('leave the test database with the messages table, its indexes and its sequence', async () => {
    expect(await schemaOf(iso.databaseUrl)).toEqual(EXPECTED);
  });

  it('undo all and migrate again on a fresh database', async () => {
    const url = new URL(iso.databaseUrl);
    url.pathname = `/sc_migrate_${uniqueTag()}`;
    const databaseUrl = url.toString();
    await createDatabase(databaseUrl);
    try {
      await migrate(databaseUrl);
      expect(await schemaOf(databaseUrl)).toEqual(EXPECTED);
      await migrate(databaseUrl, 'db:migrate:undo:all');
      expect(await schemaOf(databaseUrl)).toEqual({ table: false, sequence: false, indexes: [], columns: [] });
      await migrate(databaseUrl);
      expect(await schemaOf(databaseUrl)).toEqual(EXPECTED);
    } finally {
      await dropDatabase(databaseUrl);
    }
  });
});
