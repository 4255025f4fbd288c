/** Environment for the CLI scripts: process environment over .env at the repository root. */
import { resolve } from 'node:path';
import { readEnvFile, REPO_ROOT } from '../../shared/src/config';

export const ROOT = resolve(__dirname, '..', '..');

/** The settings file the scripts and the services read: ENV_FILE, else .env at the repository root. */
export const envFilePath = (): string => process.env.ENV_FILE ?? resolve(REPO_ROOT, '.env');

export function scriptEnv(): Record<string, string | undefined> {
  const file = readEnvFile(envFilePath());
  return { ...file, ...process.env };
}

export function die(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

/** The schemes each service URL may use and the shape its problem shows. */
export const URL_FORMS = {
  redis: { protocols: ['redis:', 'rediss:'], form: 'redis://[user:password@]host:port' },
  amqp: { protocols: ['amqp:', 'amqps:'], form: 'amqp://user:password@host:port' },
  postgres: { protocols: ['postgres:', 'postgresql:'], form: 'postgres://user[:password]@host:port/database' },
} as const;

/** One line when `value` (of `variable`) is not a URL of that service with a host, else undefined. */
export function urlProblem(variable: string, value: string, kind: keyof typeof URL_FORMS): string | undefined {
  const { protocols, form } = URL_FORMS[kind];
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    // not a URL at all: the same message
  }
  if (url && (protocols as readonly string[]).includes(url.protocol) && url.hostname) return undefined;
  // Whatever precedes an '@' may be a password, even in a value that does not parse.
  const shown = value.includes('@') ? `***${value.slice(value.lastIndexOf('@'))}` : value;
  return `${variable} = "${shown}" is not a URL of the form ${form}; fix it in .env`;
}

/** One line when `value` (of `variable`) is not a TCP port 1-65535, else undefined. */
export function portProblem(variable: string, value: string): string | undefined {
  const port = /^\d{1,5}$/.test(value) ? Number(value) : 0;
  return port >= 1 && port <= 65535 ? undefined : `${variable} = "${value}" is not a port; set it to a whole number from 1 to 65535 in .env`;
}
