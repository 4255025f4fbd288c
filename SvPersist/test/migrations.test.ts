import { describe, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { MIGRATIONS } from '../src/migrations';
import { isolation } from '../../test/helpers';
import { createDatabase, dropDatabase, migrate } from '../../scripts/lib/db';
import { createStore, type Store } from '../src/store';
import { createSequelize } from '../src/app';
import { makeMessage, uniqueTag, withDb } from './support';

const iso = isolation();

interface Schema {
  table: boolean;
  cursorTable: boolean;
  sequence: boolean;
  indexes: string[];
  /** indexes of rooms and room_members */
  roomIndexes: string[];
  columns: string[];
  /** the text columns whose collation is not the database's, with it */
  collations: Record<string, string>;
}

async function schemaOf(databaseUrl: string): Promise<Schema> {
  return withDb(databaseUrl, async (db) => {
    const table = await db.query(`SELECT to_regclass('public.messages') IS NOT NULL AS ok`);
    const cursorTable = await db.query(`SELECT to_regclass('public.messages_cursor') IS NOT NULL AS ok`);
    const sequence = await db.query(`SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'messages_seq' AND relkind = 'S') AS ok`);
    const indexes = await db.query<{ indexname: string }>(`SELECT indexname FROM pg_indexes WHERE tablename = 'messages' ORDER BY indexname`);
    const roomIndexes = await db.query<{ indexname: string }>(`SELECT indexname FROM pg_indexes WHERE tablename IN ('rooms', 'room_members') ORDER BY indexname`);
    const columns = await db.query<{ column_name: string; collation_name: string | null }>(
      `SELECT column_name, collation_name FROM information_schema.columns WHERE table_name = 'messages' ORDER BY ordinal_position`,
    );
    return {
      table: table.rows[0].ok as boolean,
      cursorTable: cursorTable.rows[0].ok as boolean,
      sequence: sequence.rows[0].ok as boolean,
      indexes: indexes.rows.map((r) => r.indexname),
      roomIndexes: roomIndexes.rows.map((r) => r.indexname),
      columns: columns.rows.map((r) => r.column_name),
      collations: Object.fromEntries(columns.rows.filter((r) => r.collation_name !== null).map((r) => [r.column_name, r.collation_name as string])),
    };
  });
}

const EXPECTED: Schema = {
  table: true,
  cursorTable: true,
  sequence: true,
  // messages_seq_brin_idx: the notifier's read of the newest rows, a few pages for the whole table
  indexes: ['messages_conversation_position_idx', 'messages_pkey', 'messages_recipient_seq_idx', 'messages_room_seq_idx', 'messages_sender_client_idx', 'messages_sender_seq_idx', 'messages_seq_brin_idx'],
  roomIndexes: ['room_members_current_idx', 'room_members_room_idx', 'room_members_user_current_idx', 'room_members_user_intervals_idx', 'rooms_pkey'],
  columns: ['id', 'seq', 'sender', 'recipient', 'room_id', 'conversation_id', 'client_id', 'body', 'created_at', 'stored_at', 'position', 'partition'],
  // byte order for every key column (cheaper index entries); the body keeps the database's
  collations: { id: 'C', sender: 'C', recipient: 'C', room_id: 'C', conversation_id: 'C', client_id: 'C' },
};

async function withFreshDatabase(fn: (databaseUrl: string) => Promise<void>): Promise<void> {
  const url = new URL(iso.databaseUrl);
  url.pathname = `/sc_migrate_${uniqueTag()}`;
  const databaseUrl = url.toString();
  await createDatabase(databaseUrl);
  try {
    await fn(databaseUrl);
  } finally {
    await dropDatabase(databaseUrl);
  }
}

async function withStore<T>(databaseUrl: string, fn: (store: Store) => Promise<T>): Promise<T> {
  const sequelize = createSequelize(databaseUrl, 1);
  try {
    return await fn(createStore({ sequelize }));
  } finally {
    await sequelize.close();
  }
}

const cursorOf = (databaseUrl: string) => withStore(databaseUrl, (store) => store.cursor());

describe('migrations', () => {
  it("are all named in the list SvPersist checks the database against (src/migrations.ts)", () => {
    const files = readdirSync(resolve(__dirname, '..', 'db', 'migrations')).filter((f) => /\.(ts|js)$/.test(f)).sort();
    expect(MIGRATIONS).toEqual(files);
  });

  it('leave the test database with the messages table, its indexes and its sequence', async () => {
    expect(await schemaOf(iso.databaseUrl)).toEqual(EXPECTED);
  });

  it('undo all and migrate again on a fresh database', async () => {
    await withFreshDatabase(async (databaseUrl) => {
      await migrate(databaseUrl);
      expect(await schemaOf(databaseUrl)).toEqual(EXPECTED);
      expect(await cursorOf(databaseUrl)).toEqual({ cursor: '0', newestTs: null });
      await migrate(databaseUrl, 'db:migrate:undo:all');
      expect(await schemaOf(databaseUrl)).toEqual({ table: false, cursorTable: false, sequence: false, indexes: [], roomIndexes: [], columns: [], collations: {} });
      await migrate(databaseUrl);
      expect(await schemaOf(databaseUrl)).toEqual(EXPECTED);
    });
  });

  it('an upgrade from the first schema keeps the storage position of the rows already stored', async () => {
    await withFreshDatabase(async (databaseUrl) => {
      await migrate(databaseUrl, 'db:migrate', '20261123000000-create-messages.ts');
      const stored = await withDb(databaseUrl, async (db) => {
        const rows = await db.query<{ seq: string }>(`
          INSERT INTO messages (id, seq, sender, recipient, conversation_id, client_id, body, created_at)
          SELECT 'm' || g, nextval('messages_seq'), 'a', 'b', 'a:b', 'c' || g, 'hi', to_timestamp((1732345678000 + g) / 1000.0)
          FROM generate_series(1, 3) AS g
          RETURNING seq::text AS seq`);
        return rows.rows.map((r) => r.seq);
      });
      await migrate(databaseUrl);
      expect(await schemaOf(databaseUrl)).toEqual(EXPECTED);
      expect(await cursorOf(databaseUrl)).toEqual({ cursor: stored[2], newestTs: 1732345678003 });
      // notifications start after the rows stored before them: history is never notified
      expect(await withDb(databaseUrl, async (db) => (await db.query<{ s: string }>('SELECT last_seq::text AS s FROM notify_state')).rows.map((r) => r.s))).toEqual([stored[2]]);

      await withStore(databaseUrl, async (store) => {
        // queued before the upgrade (no position): storage numbers it after the rows it numbered
        const message = makeMessage('a', 'b', { ts: 1732345679000, msgId: 'm4', seq: 0 });
        await store.insertBatch([message]);
        const after = await store.cursor();
        expect(BigInt(after.cursor)).toBe(BigInt(stored[2] as string) + 1n);
        expect(after.newestTs).toBe(1732345679000);
        // A batch whose rows all exist already leaves the cursor where it is.
        expect(await store.insertBatch([message])).toBe(0);
        expect(await store.cursor()).toEqual(after);
        // Rows stored before the upgrade are found through the rebuilt indexes, in their order.
        expect((await store.history({ user: 'a', with: 'b', limit: 10 })).messages.map((m) => m.msgId)).toEqual(['m1', 'm2', 'm3', message.msgId]);
        expect((await store.history({ user: 'b', with: 'a', before: 'm3', limit: 10 })).messages.map((m) => m.msgId)).toEqual(['m1', 'm2']);
        expect((await store.sync({ user: 'b', after: stored[0] as string, limit: 10 })).messages.map((m) => m.msgId)).toEqual(['m2', 'm3', message.msgId]);
        expect((await store.byClient('a', 'c2'))?.msgId).toBe('m2');
        // Rows stored before positions existed are numbered in storage order; new positions follow them.
        expect((await store.history({ user: 'a', with: 'b', limit: 10 })).messages.map((m) => m.seq)).toEqual([1, 2, 3, 4]);
        // (the repeated batch took position 5 and stored nothing: an empty position)
        expect(await store.reservePositions('a:b', 10)).toBe(15);
      });
    });
  });
});
