/**
 * One Postgres database per test run, migrated with sequelize-cli, dropped at
 * the end. Redis key prefixes and queue names are made unique per test file
 * (see test/helpers.ts), so runs and files never collide.
 */
import type { TestProject } from 'vitest/node' with { 'resolution-mode': 'import' };
import { randomBytes } from 'node:crypto';
import { createDatabase, dropDatabase, migrate } from '../scripts/lib/db';
import { services } from './services';

declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const base = new URL(services().databaseUrl);
  base.pathname = `/sc_test_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  const databaseUrl = base.toString();
  await createDatabase(databaseUrl);
  await migrate(databaseUrl);
  project.provide('databaseUrl', databaseUrl);
  return async () => {
    if (!process.env.KEEP_TEST_DB) await dropDatabase(databaseUrl);
  };
}
