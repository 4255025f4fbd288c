/** npm run db:create — creates the database named in DATABASE_URL if missing. */
import { createDatabase } from './lib/db';
import { scriptEnv, die, urlProblem } from './lib/env';
import { errorMessage } from '../shared/src/errors';

async function main(): Promise<void> {
  const cmd = process.argv[2];
  const url = scriptEnv().DATABASE_URL;
  if (!url) die('db: DATABASE_URL is not set; set it in .env');
  if (cmd !== 'create') die('usage: ts-node scripts/db.ts create');
  const invalid = urlProblem('DATABASE_URL', url, 'postgres');
  if (invalid) die(`db:create: ${invalid}`);
  const { host, pathname } = new URL(url);
  try {
    const created = await createDatabase(url);
    process.stdout.write(created ? `db:create: created ${pathname.slice(1)}\n` : `db:create: ${pathname.slice(1)} already exists\n`);
  } catch (err) {
    // Not only "unreachable": a refused login or a bad database name end here too.
    die(`db:create: could not create ${pathname.slice(1)} at ${host}: ${errorMessage(err)}; check that PostgreSQL runs there and DATABASE_URL in .env`);
  }
}
main().catch((err: unknown) => die(`db:create: ${errorMessage(err)}`));
