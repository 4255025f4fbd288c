import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sequelize } from 'sequelize';
import { isolation } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStore, type Store } from '../src/store';
import { makeMessage, rowsOf, users } from './support';
import { componentOf, parsePosition } from '../src/sync-cursor';

const iso = isolation();
let sequelize: Sequelize;
let store: Store;

beforeAll(() => {
  sequelize = createSequelize(iso.databaseUrl, 2);
  store = createStore({ sequelize });
});

afterAll(async () => {
  await sequelize.close();
});

describe('batch insert', () => {
  it('stores a batch of new rows in order and answers how many it stored', async () => {
    const [a, b] = users(2) as [string, string];
    const batch = Array.from({ length: 5 }, (_, i) => makeMessage(i % 2 ? b : a, i % 2 ? a : b));
    expect(await store.insertBatch(batch)).toBe(5);
    expect((await rowsOf(iso.databaseUrl, [a, b])).map((r) => r.id)).toEqual(batch.map((m) => m.msgId));
    // Other test files write to the same database: the cursor is at this batch's newest row or past it.
    const { cursor } = await store.cursor();
    expect(componentOf(parsePosition(cursor), 0) >= BigInt((await rowsOf(iso.databaseUrl, [a, b]))[4]?.seq ?? 'x')).toBe(true);
  });

  it('skips the rows already stored, by id or by (sender, clientId), and stores the rest of the batch in the same call', async () => {
    const [a, b] = users(2) as [string, string];
    const first = Array.from({ length: 3 }, () => makeMessage(a, b));
    expect(await store.insertBatch(first)).toBe(3);
    const fresh = [makeMessage(a, b), makeMessage(b, a)];
    const sameKey = { ...(first[1] as (typeof first)[number]), id: `${first[1]?.msgId}-again`, body: 'other body' };
    expect(await store.insertBatch([fresh[0], first[0], sameKey, fresh[1]] as typeof first)).toBe(2);

    const rows = await rowsOf(iso.databaseUrl, [a, b]);
    expect(rows.map((r) => r.id)).toEqual([...first, ...fresh].map((m) => m.msgId));
    expect(rows.find((r) => r.id === first[1]?.msgId)?.body).toBe(first[1]?.body);
    // The cursor moved at least to the newest row the second call stored.
    expect(componentOf(parsePosition((await store.cursor()).cursor), 0) >= BigInt(rows[4]?.seq ?? 'x')).toBe(true);
  });

  it('stores one copy of a message that appears twice in one batch, and nothing for a batch stored before', async () => {
    const [a, b] = users(2) as [string, string];
    const m = makeMessage(a, b);
    expect(await store.insertBatch([m, { ...m }])).toBe(1);
    expect(await store.insertBatch([m])).toBe(0);
    expect(await rowsOf(iso.databaseUrl, [a, b])).toHaveLength(1);
  });
});
