/**
 * Writes sequelize-cli's config (SvPersist/db/config.json) from DATABASE_URL
 * (environment over .env). Usage: npm run genConfig [-- --url postgres://...]
 */
import { writeFileSync, mkdirSync } from 'node:fs';
import { resolve, dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, scriptEnv, die } from './lib/env';

export function sequelizeCliConfig(databaseUrl: string): Record<string, unknown> {
  const entry = { url: databaseUrl, dialect: 'postgres', logging: false, migrationStorageTableName: 'SequelizeMeta' };
  return { development: entry, test: entry, production: entry };
}

export function writeSequelizeCliConfig(databaseUrl: string, path = resolve(ROOT, 'SvPersist/db/config.json')): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(sequelizeCliConfig(databaseUrl), null, 2)}\n`);
  return path;
}

if (require.main === module) {
  const { values } = parseArgs({ options: { url: { type: 'string' }, help: { type: 'boolean' } } });
  if (values.help) {
    process.stdout.write('npm run genConfig [-- --url postgres://user@host:5432/db]\nWrites SvPersist/db/config.json for sequelize-cli from --url, else DATABASE_URL.\n');
    process.exit(0);
  }
  const url = values.url ?? scriptEnv().DATABASE_URL;
  if (!url || !/^postgres(ql)?:\/\//.test(url)) die('genConfig: DATABASE_URL is not a postgres:// URL; set it in .env or pass --url');
  const path = writeSequelizeCliConfig(url);
  process.stdout.write(`genConfig: wrote ${path} for ${url.replace(/\/\/[^@]*@/, '//***@')}\n`);
}
