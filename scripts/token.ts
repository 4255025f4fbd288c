/** npm run token -- <userId> [--ttl 3600]: prints a client token signed with JWT_SECRET (from .env). */
import { parseArgs } from 'node:util';
import { SignJWT } from 'jose';
import { isUserId, USER_ID_RULE } from '../shared/src/protocol';
import { scriptEnv, die } from './lib/env';

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { ttl: { type: 'string', default: '86400' } } });
  const userId = positionals[0];
  if (!isUserId(userId)) die(`token: give a user id (${USER_ID_RULE}): npm run token -- alice`);
  const ttl = Number(values.ttl);
  if (!Number.isInteger(ttl) || ttl <= 0) die('token: --ttl must be a whole number of seconds');
  const secret = scriptEnv().JWT_SECRET;
  if (!secret) die('token: JWT_SECRET is not set (environment or .env)');
  const token = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject(userId).setIssuedAt().setExpirationTime(Math.floor(Date.now() / 1000) + ttl).sign(new TextEncoder().encode(secret));
  process.stdout.write(`${token}\n`);
}
void main();
