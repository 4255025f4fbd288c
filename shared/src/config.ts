/**
 * Configuration: each service declares its options once (env name, flag, schema,
 * default, description). Values come from CLI flags over the environment over
 * the `.env` file over defaults; every problem is reported in one ConfigError,
 * and the result is frozen. Domain code receives values, never process.env.
 */
import { readFileSync, existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parse as parseDotenv } from 'dotenv';
import { z } from 'zod';
import { ConfigError } from './errors';
import { parseHostPorts } from './redis';

export interface OptionSpec<T = unknown> {
  env: string;
  /** long flag name without dashes; defaults to the env name in kebab-case */
  flag?: string;
  schema: z.ZodType<T>;
  default?: string;
  doc: string;
  secret?: boolean;
}

export type ConfigSpec = Record<string, OptionSpec>;
export type ConfigOf<S extends ConfigSpec> = { readonly [K in keyof S]: S[K] extends OptionSpec<infer T> ? T : never };

export function opt<T>(spec: OptionSpec<T>): OptionSpec<T> {
  return spec;
}

/** Repository root: where `.env` lives (shared/dist or shared/src are two levels down). */
export const REPO_ROOT = resolve(__dirname, '..', '..');

export function flagName(spec: OptionSpec): string {
  return spec.flag ?? spec.env.toLowerCase().replace(/_/g, '-');
}

export interface LoadOptions {
  argv?: string[];
  env?: NodeJS.ProcessEnv;
  /** path of the .env file; `false` to skip it */
  envFile?: string | false;
  /** explicit overrides (tests build services in-process with these) */
  overrides?: Record<string, unknown>;
}

export function readEnvFile(path: string): Record<string, string> {
  return existsSync(path) ? parseDotenv(readFileSync(path)) : {};
}

export function loadConfig<S extends ConfigSpec>(spec: S, options: LoadOptions = {}): ConfigOf<S> {
  const env = options.env ?? process.env;
  const envFilePath = options.envFile === false ? undefined : (options.envFile ?? env.ENV_FILE ?? resolve(REPO_ROOT, '.env'));
  const fileValues = envFilePath ? readEnvFile(envFilePath) : {};
  const problems: string[] = [];

  const flagOptions: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } };
  for (const s of Object.values(spec)) flagOptions[flagName(s)] = { type: 'string' };
  let flags: Record<string, string | boolean | undefined> = {};
  try {
    flags = parseArgs({ args: options.argv ?? [], options: flagOptions, strict: true, allowPositionals: false }).values as typeof flags;
  } catch (err) {
    problems.push(`${(err as Error).message.split('\n')[0]} (see --help)`);
  }

  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(spec)) {
    if (options.overrides && key in options.overrides) {
      out[key] = options.overrides[key];
      continue;
    }
    const fromFlag = flags[flagName(s)];
    const raw = typeof fromFlag === 'string' ? fromFlag : (env[s.env] ?? fileValues[s.env] ?? s.default);
    const parsed = s.schema.safeParse(raw === '' && s.default !== undefined ? s.default : raw);
    if (parsed.success) out[key] = parsed.data;
    else {
      const shown = raw === undefined ? 'is not set' : s.secret ? 'is invalid' : `= ${JSON.stringify(raw)} is invalid`;
      problems.push(`${s.env} (--${flagName(s)}) ${shown}: ${parsed.error.issues.map((i) => i.message).join('; ')}`);
    }
  }
  if (problems.length > 0) throw configError('invalid configuration', problems);
  return Object.freeze(out) as ConfigOf<S>;
}

/** One problem is one line ("invalid configuration: X is ..."); several are listed one per line. */
export function configError(title: string, problems: readonly string[]): ConfigError {
  return new ConfigError(problems.length === 1 ? `${title}: ${problems[0]}` : `${title}:\n  - ${problems.join('\n  - ')}`);
}

export function helpText(title: string, spec: ConfigSpec): string {
  const lines = [title, '', 'Options (flag, environment variable, default):'];
  for (const s of Object.values(spec)) {
    const def = s.default === undefined ? '' : s.secret ? ' [default: development value]' : ` [default: ${s.default || '""'}]`;
    lines.push(`  --${flagName(s)}  ${s.env}${def}`, `      ${s.doc}`);
  }
  lines.push('', 'Flags override the environment, which overrides .env at the repository root.');
  return lines.join('\n');
}

// ---- reusable schemas ------------------------------------------------------

export const port = z.coerce.number().int('must be an integer').min(0, 'must be 0-65535').max(65535, 'must be 0-65535');
export const positiveInt = z.coerce.number().int('must be an integer').positive('must be > 0');
export const nonNegativeInt = z.coerce.number().int('must be an integer').min(0, 'must be >= 0');
export const environment = z.enum(['development', 'test', 'production'], { message: 'must be development, test or production' });
export const logLevel = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { message: 'must be one of fatal, error, warn, info, debug, trace, silent' });
export const urlOf = (...protocols: string[]) =>
  z.string({ message: 'is required' }).refine((v) => {
    try {
      return protocols.includes(new URL(v).protocol);
    } catch {
      return false;
    }
  }, `must be a URL (${protocols.join(' or ')})`);
/** Empty (a feature turned off), or an http(s) URL. */
export const optionalHttpUrl = z.string().refine((v) => v === '' || urlOf('http:', 'https:').safeParse(v).success, 'must be an http:// or https:// URL, or empty');
export const httpUrl = urlOf('http:', 'https:').transform((v) => v.replace(/\/+$/, ''));
export const bool = z.enum(['true', 'false', '1', '0'], { message: 'must be true or false' }).transform((v) => v === 'true' || v === '1');
export const nonEmpty = z.string({ message: 'is required' }).min(1, 'must not be empty');
export const keyPrefix = z.string().regex(/^[A-Za-z0-9_.:-]{0,64}$/, 'must be 0-64 characters of A-Z a-z 0-9 _ . : -');
export const instanceIdSchema = z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'must be 1-64 characters of A-Z a-z 0-9 _ . -');

/** `host:port,host:port` (empty: none), parsed. */
export const hostPortList = z
  .string()
  .optional()
  .transform((v, ctx) => {
    const nodes = parseHostPorts(v ?? '');
    if (typeof nodes !== 'string') return nodes;
    ctx.addIssue({ code: 'custom', message: `${nodes}; give the host:port of Redis Cluster nodes, comma-separated` });
    return z.NEVER;
  });

/** The Redis Cluster option of the services that use Redis (SvDiscover, SvWebsocket): set alike on all of them. */
export const redisClusterNodesOption = opt({
  env: 'REDIS_CLUSTER_NODES',
  schema: hostPortList,
  default: '',
  doc: 'Redis Cluster seed nodes (host:port, comma-separated; a few are enough, the rest is discovered); set: Redis Cluster instead of the one node at REDIS_URL, whose user, password and rediss: still apply. Set it alike (or leave it empty) on SvDiscover and every SvWebsocket: see docs/DESIGN.md, Redis Cluster',
});

/** An optional string where empty means unset. */
export const optionalString = z.string().optional().transform((v) => (v ? v : undefined));

/** Options every service shares. */
export const commonSpec = {
  environment: opt({ env: 'ENVIRONMENT', schema: environment, default: 'development', doc: 'development, test or production' }),
  logLevel: opt({ env: 'LOG_LEVEL', schema: logLevel, default: 'info', doc: 'pino log level' }),
  internalToken: opt({ env: 'INTERNAL_TOKEN', schema: nonEmpty, doc: 'shared secret of the cluster-internal HTTP API (Authorization: Bearer)', secret: true }),
  internalTokenPrevious: opt({ env: 'INTERNAL_TOKEN_PREVIOUS', schema: optionalString, doc: 'previous internal token, still accepted during a rotation', secret: true }),
  shutdownTimeoutMs: opt({ env: 'SHUTDOWN_TIMEOUT_MS', schema: positiveInt, default: '10000', doc: 'deadline of a graceful shutdown' }),
} satisfies ConfigSpec;

export const DEV_SECRET_MARK = 'development-only';

/** Production refuses development secrets; checked after loading. */
export function checkProductionSecrets(cfg: { environment: string; internalToken: string; internalTokenPrevious?: string; jwtSecret?: string; serverApiKeys?: readonly string[]; notifyWebhookSecret?: string }): void {
  if (cfg.environment !== 'production') return;
  const problems: string[] = [];
  const check = (name: string, value: string) => {
    const fix = 'set a production secret of at least 32 bytes (for example: openssl rand -hex 32)';
    if (value.includes(DEV_SECRET_MARK)) problems.push(`${name} is the development value (from .env); ${fix}`);
    else if (Buffer.byteLength(value) < 32) problems.push(`${name} is ${Buffer.byteLength(value)} bytes, too short for production; ${fix}`);
  };
  check('INTERNAL_TOKEN', cfg.internalToken);
  if (cfg.jwtSecret !== undefined) check('JWT_SECRET', cfg.jwtSecret);
  if (cfg.notifyWebhookSecret !== undefined) check('NOTIFY_WEBHOOK_SECRET', cfg.notifyWebhookSecret);
  const keys = cfg.serverApiKeys ?? [];
  keys.forEach((key, i) => {
    const name = keys.length > 1 ? `SERVER_API_KEYS (key ${i + 1} of ${keys.length})` : 'SERVER_API_KEYS';
    // A Server API key that is also the internal token would open the cluster-internal API to the product's backend, and the reverse.
    if (key === cfg.internalToken || key === cfg.internalTokenPrevious) problems.push(`${name} is the same as INTERNAL_TOKEN${key === cfg.internalToken ? '' : '_PREVIOUS'}; the Server API and the internal API need different secrets (for example: openssl rand -hex 32)`);
    else check(name, key);
  });
  if (problems.length) throw configError('invalid configuration for ENVIRONMENT=production', problems);
}

// ---- the broker (every service that publishes or consumes) -------------------

const isAmqpUrl = (v: string) => {
  try {
    const u = new URL(v);
    return (u.protocol === 'amqp:' || u.protocol === 'amqps:') && u.hostname !== '';
  } catch {
    return false;
  }
};
/** Comma-separated amqp(s) URLs, one per node; empty: AMQP_URL alone. */
export const amqpUrlList = z
  .string()
  .transform((v) => v.split(',').map((s) => s.trim()).filter(Boolean))
  .refine((urls) => urls.every(isAmqpUrl), 'must be comma-separated amqp:// or amqps:// URLs, one per RabbitMQ node (amqp://user:password@host:port)');
export const queueTypeSchema = z.enum(['quorum', 'classic'], { message: 'must be quorum or classic' });
export const queuePartitionsSchema = z.coerce.number().int('must be an integer').min(1, 'must be 1-64').max(64, 'must be 1-64');

/** The broker options of SvWebsocket and SvPersist: the nodes, and the queues' shape (the same on every process). */
export const brokerSpec = {
  amqpUrl: opt({ env: 'AMQP_URL', schema: urlOf('amqp:', 'amqps:'), default: 'amqp://guest:guest@127.0.0.1:5672', doc: 'RabbitMQ URL (one node); AMQP_URLS, when set, takes its place', secret: true }),
  amqpUrls: opt({
    env: 'AMQP_URLS',
    schema: amqpUrlList,
    default: '',
    doc: 'the RabbitMQ cluster: comma-separated URLs, one per node; connections start on a random node and move to the next one when theirs fails. At start a node that does not answer is named in one warning; none answering (two or more nodes) or a host that does not resolve stops the service. Empty: AMQP_URL alone',
    secret: true,
  }),
  queueType: opt({ env: 'QUEUE_TYPE', schema: queueTypeSchema, default: 'quorum', doc: 'quorum: replicated queues (a confirm means a majority of the nodes has the message; a delivery handed out 20 times goes to the dead-letter queue); classic: single-node queues, for one broker or to compare. The same on every gateway and SvPersist: a queue declared with the other type stops the service with one line' }),
  queuePartitions: opt({ env: 'QUEUE_PARTITIONS', schema: queuePartitionsSchema, default: '1', doc: 'queues of the write path (1-64): each conversation goes through one, and every SvPersist consumes each with one active consumer and the others standing by. The same on every gateway and SvPersist (a different count stops the service at start); changing it: docs/OPERATIONS.md#changing-queue_partitions' }),
} satisfies ConfigSpec;

/** The nodes to connect to: AMQP_URLS, or AMQP_URL as a one-node list. */
export function brokerUrls(cfg: { amqpUrl: string; amqpUrls?: readonly string[] }): string[] {
  return cfg.amqpUrls && cfg.amqpUrls.length > 0 ? [...cfg.amqpUrls] : [cfg.amqpUrl];
}
