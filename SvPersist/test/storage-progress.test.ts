/**
 * Storage progress shared by SvPersist instances (storage-progress.ts) on a
 * real Postgres: each instance's report holds the others' decision back to
 * it; a stopped instance's row is gone, a dead one's is ignored once stale.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sequelize } from 'sequelize';
import { databasePerFile, eventually } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStorageProgress, type StorageProgress } from '../src/storage-progress';
import { silentLog } from './support';

const databaseUrl = databasePerFile('progress');
let sequelize: Sequelize;
const open: StorageProgress[] = [];

beforeAll(() => {
  sequelize = createSequelize(databaseUrl, 4);
});
afterAll(async () => {
  await Promise.all(open.map((p) => p.close().catch(() => undefined)));
  await sequelize?.close();
});

function instance(id: string, local: number, options: { intervalMs?: number; staleMs?: number } = {}): StorageProgress {
  const p = createStorageProgress({ sequelize, instanceId: id, local: async () => local, log: silentLog(), ...options });
  open.push(p);
  return p;
}

describe('storage progress across instances', () => {
  it("each instance's decision waits for the least report of the others; a stopped one's row is gone, a dead one's ignored once stale", async () => {
    const ahead = instance('ahead', 9_000);
    const behind = instance('behind', 5_000);
    await Promise.all([ahead.report(), behind.report()]);
    expect(await ahead.storedUntil()).toBe(5_000);
    // its own report is never read back: its writers' current view counts
    expect(await behind.storedUntil()).toBe(5_000);

    await behind.close();
    expect(await ahead.storedUntil()).toBe(9_000);

    // an instance that stops reporting without closing (it died): counted until its row is stale
    instance('dead', 1_000, { intervalMs: 3_600_000 });
    const reader = instance('reader', 9_000, { staleMs: 300 });
    await eventually(async () => expect(await reader.storedUntil()).toBe(1_000));
    await eventually(async () => expect(await reader.storedUntil()).toBe(9_000), { timeoutMs: 5_000 });
  });
});
