import { z } from 'zod';
import {
  opt,
  brokerSpec,
  commonSpec,
  port,
  positiveInt,
  nonEmpty,
  urlOf,
  keyPrefix,
  loadConfig,
  checkProductionSecrets,
  type ConfigOf,
  type LoadOptions,
  optionalString,
  bool,
  configError,
  optionalHttpUrl,
} from '@simplechat/shared';

export const persistSpec = {
  ...commonSpec,
  port: opt({ env: 'PERSIST_PORT', flag: 'port', schema: port, default: '3000', doc: 'port of the internal read API and /health' }),
  host: opt({ env: 'PERSIST_HOST', flag: 'host', schema: nonEmpty, default: '127.0.0.1', doc: 'address to bind' }),
  databaseUrl: opt({ env: 'DATABASE_URL', schema: urlOf('postgres:', 'postgresql:'), default: 'postgres://postgres@127.0.0.1:5432/simplechat', doc: 'Postgres URL', secret: true }),
  databaseReadUrl: opt({
    env: 'DATABASE_READ_URL',
    schema: z.string().refine((v) => v === '' || urlOf('postgres:', 'postgresql:').safeParse(v).success, 'must be a postgres:// or postgresql:// URL, or empty'),
    default: '',
    doc: 'a streaming replica of DATABASE_URL that serves history and sync (each read waits up to 100 ms for it to replay what the primary had committed, else reads the primary; a replica that fails is passed over); empty: everything reads DATABASE_URL',
    secret: true,
  }),
  ...brokerSpec,
  queuePrefix: opt({ env: 'QUEUE_PREFIX', schema: keyPrefix, default: 'simplechat.', doc: 'prefix of the exchange and queue names' }),
  prefetch: opt({ env: 'PREFETCH', schema: positiveInt.max(65535, 'must be <= 65535'), default: '5000', doc: 'unacked deliveries (each a batch of messages) the broker may hand out at once' }),
  maxBatchRows: opt({ env: 'MAX_BATCH_ROWS', schema: positiveInt, default: '5000', doc: 'messages that trigger an insert' }),
  maxBatchDelayMs: opt({ env: 'MAX_BATCH_DELAY_MS', schema: positiveInt, default: '20', doc: 'longest wait from the first buffered message to its insert' }),
  maxRoomMembers: opt({ env: 'MAX_ROOM_MEMBERS', schema: positiveInt, default: '1000', doc: 'current members of one room at most' }),
  emptyAfterMs: opt({ env: 'EMPTY_AFTER_MS', schema: positiveInt, default: '60000', doc: 'a position with no stored message this long after a later one of its conversation was accepted is reported empty' }),
  maxRoomsPerUser: opt({ env: 'MAX_ROOMS_PER_USER', schema: positiveInt, default: '500', doc: 'rooms one user may be a current member of at most' }),
  notifyWebhookUrl: opt({ env: 'NOTIFY_WEBHOOK_URL', schema: optionalHttpUrl, default: '', doc: 'where missed messages are posted (PROTOCOL.md v1.2, README#notifications); empty: notifications off' }),
  notifyWebhookSecret: opt({ env: 'NOTIFY_WEBHOOK_SECRET', schema: optionalString, doc: 'HMAC-SHA256 key of the SimpleChat-Signature header; required with NOTIFY_WEBHOOK_URL, at least 32 bytes in production', secret: true }),
  notifyAfterMs: opt({ env: 'NOTIFY_AFTER_MS', schema: positiveInt, default: '10000', doc: 'a message not covered by the recipient\'s delivered or read mark this long after its ack is notified' }),
  notifyIncludeBody: opt({ env: 'NOTIFY_INCLUDE_BODY', schema: bool, default: 'true', doc: 'whether notified messages carry their body (false: everything but the body)' }),
  dbPoolMax: opt({ env: 'DB_POOL_MAX', schema: positiveInt, default: '10', doc: 'Postgres connections in the pool' }),
};

export type PersistConfig = ConfigOf<typeof persistSpec>;

export function loadPersistConfig(options: LoadOptions): PersistConfig {
  const cfg = loadConfig(persistSpec, options);
  if (cfg.notifyWebhookUrl && !cfg.notifyWebhookSecret) throw configError('invalid configuration', ['NOTIFY_WEBHOOK_SECRET (--notify-webhook-secret) is not set: NOTIFY_WEBHOOK_URL needs it to sign notifications (for example: openssl rand -hex 32)']);
  checkProductionSecrets({ ...cfg, ...(cfg.notifyWebhookUrl && cfg.notifyWebhookSecret ? { notifyWebhookSecret: cfg.notifyWebhookSecret } : {}) });
  return cfg;
}
