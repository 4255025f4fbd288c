/** Environment for the CLI scripts: process environment over .env at the repository root. */
import { resolve } from 'node:path';
import { readEnvFile, REPO_ROOT } from '../../shared/src/config';

export const ROOT = resolve(__dirname, '..', '..');

export function scriptEnv(): Record<string, string | undefined> {
  const file = readEnvFile(process.env.ENV_FILE ?? resolve(REPO_ROOT, '.env'));
  return { ...file, ...process.env };
}

export function die(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}
