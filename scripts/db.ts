/** npm run db:create — creates the database named in DATABASE_URL if missing. */
import { createDatabase } from './lib/db';
import { scriptEnv, die } from './lib/env';
import { errorMessage } from '../shared/src/errors';

async function main(): Promise<void> {
  const cmd = process.argv[2];
  const url = scriptEnv().DATABASE_URL;
  if (!url) die('db: DATABASE_URL is not set; set it in .env');
  if (cmd !== 'create') die('usage: ts-node scripts/db.ts create');
  try {
    const created = await createDatabase(url);
    process.stdout.write(created ? `db:create: created ${new URL(url).pathname.slice(1)}\n` : `db:create: ${new URL(url).pathname.slice(1)} already exists\n`);
  } catch (err) {
    die(`db:create: cannot reach Postgres at ${new URL(url).host}: ${errorMessage(err)} (is PostgreSQL running?)`);
  }
}
void main();
