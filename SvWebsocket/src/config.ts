import { z } from 'zod';
import {
  opt,
  brokerSpec,
  commonSpec,
  port,
  positiveInt,
  nonNegativeInt,
  httpUrl,
  urlOf,
  nonEmpty,
  keyPrefix,
  instanceIdSchema,
  loadConfig,
  checkProductionSecrets,
  type ConfigOf,
  type LoadOptions,
  optionalString,
  ConfigError,
  DEFAULT_MAX_BODY_CHARS,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_SYNC_INTERVAL_MS,
  redisClusterNodesOption,
} from '@simplechat/shared';

const originList = z
  .string()
  .transform((v) => v.split(',').map((s) => s.trim()).filter(Boolean))
  .refine((list) => list.every((o) => o === '*' || /^https?:\/\/[^/\s]+$/.test(o)), 'must be a comma-separated list of origins like https://chat.example.com or http://localhost:*');
// Visible ASCII only: a key travels in an HTTP header.
const keyList = z
  .string()
  .optional()
  .transform((v) => (v ?? '').split(',').map((s) => s.trim()).filter(Boolean))
  .refine((keys) => keys.every((k) => /^[\x21-\x7e]+$/.test(k)), 'must be comma-separated keys of visible ASCII characters (no spaces)');
const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

export const wsSpec = {
  ...commonSpec,
  port: opt({ env: 'WS_PORT', flag: 'port', schema: port, default: '3002', doc: 'port for HTTP, /ws, /client and /internal' }),
  host: opt({ env: 'WS_HOST', flag: 'host', schema: nonEmpty, default: '0.0.0.0', doc: 'address to bind' }),
  instanceId: opt({ env: 'INSTANCE_ID', schema: instanceIdSchema, default: 'ws-1', doc: 'unique name of this instance in the cluster' }),
  publicUrl: opt({ env: 'PUBLIC_URL', schema: z.string().optional().transform((v) => (v ? v.replace(/\/+$/, '') : undefined)), doc: 'URL other instances use to reach this one [default: http://127.0.0.1:<port>]' }),
  discoverUrl: opt({ env: 'DISCOVER_URL', schema: httpUrl, default: 'http://127.0.0.1:3001', doc: 'SvDiscover base URL' }),
  persistUrl: opt({ env: 'PERSIST_URL', schema: httpUrl, default: 'http://127.0.0.1:3000', doc: 'SvPersist base URL (history and sync)' }),
  redisUrl: opt({ env: 'REDIS_URL', schema: urlOf('redis:', 'rediss:'), default: 'redis://127.0.0.1:6379', doc: 'Redis for idempotency keys' }),
  ...brokerSpec,
  redisClusterNodes: redisClusterNodesOption,
  keyPrefix: opt({ env: 'KEY_PREFIX', schema: keyPrefix, default: 'simplechat:', doc: 'prefix of every Redis key' }),
  queuePrefix: opt({ env: 'QUEUE_PREFIX', schema: keyPrefix, default: 'simplechat.', doc: 'prefix of the exchange and queue names' }),
  jwtSecret: opt({ env: 'JWT_SECRET', schema: optionalString, doc: 'HS256 secret of client tokens (one of JWT_SECRET, JWT_PUBLIC_KEY, JWT_JWKS_URL is required)', secret: true }),
  jwtSecretPrevious: opt({ env: 'JWT_SECRET_PREVIOUS', schema: optionalString, doc: 'previous JWT secret, still accepted during a rotation', secret: true }),
  jwtPublicKey: opt({ env: 'JWT_PUBLIC_KEY', schema: optionalString.transform((v) => v?.replace(/\\n/g, '\n')), doc: 'PEM (SPKI) public key for RS256/ES256 tokens; \\n escapes allowed' }),
  jwtJwksUrl: opt({ env: 'JWT_JWKS_URL', schema: z.string().url('must be a URL').optional().or(z.literal('').transform(() => undefined)), doc: 'JWKS URL of your identity provider for RS256/ES256 tokens (keys cached)' }),
  jwtAlgorithms: opt({ env: 'JWT_ALGORITHMS', schema: z.string().transform((v) => v.split(',').map((s) => s.trim()).filter(Boolean)).refine((l) => l.every((a) => ['RS256', 'ES256'].includes(a)), 'must be a list of RS256, ES256'), default: 'RS256,ES256', doc: 'asymmetric algorithms accepted with JWT_PUBLIC_KEY or JWT_JWKS_URL' }),
  jwtIssuer: opt({ env: 'JWT_ISSUER', schema: optionalString, doc: 'required iss claim, when set' }),
  jwtAudience: opt({ env: 'JWT_AUDIENCE', schema: optionalString, doc: 'required aud claim, when set' }),
  jwtClockSkewSec: opt({ env: 'JWT_CLOCK_SKEW_SEC', schema: nonNegativeInt.max(300, 'must be at most 300'), default: '5', doc: 'tolerated clock difference for nbf and iat, seconds (a token is refused from its exp on)' }),
  serverApiKeys: opt({ env: 'SERVER_API_KEYS', schema: keyList, doc: 'keys of the Server API (/api/v1, Authorization: Bearer <key>) for your own backend, comma-separated: the current key and, during a rotation, the previous one; unset: the Server API refuses every request. Production: each at least 32 bytes, none equal to INTERNAL_TOKEN', secret: true }),
  allowedOrigins: opt({ env: 'ALLOWED_ORIGINS', schema: originList, default: '', doc: "browser origins allowed to open /ws (* allowed as port), besides this instance's own origin (its /client page); development adds http://localhost:* and http://127.0.0.1:*" }),
  trustProxy: opt({ env: 'TRUST_PROXY', schema: bool, default: 'false', doc: 'take the client address from X-Forwarded-For (only behind your own load balancer)' }),
  maxFrameBytes: opt({ env: 'MAX_FRAME_BYTES', schema: positiveInt, default: String(DEFAULT_MAX_FRAME_BYTES), doc: 'largest client frame; larger ones close with 1009' }),
  maxBodyChars: opt({ env: 'MAX_BODY_CHARS', schema: positiveInt, default: String(DEFAULT_MAX_BODY_CHARS), doc: 'longest message body in code points (too_large)' }),
  registerTimeoutMs: opt({ env: 'REGISTER_TIMEOUT_MS', schema: positiveInt, default: '10000', doc: 'time to send register before close 4408' }),
  pingIntervalMs: opt({ env: 'PING_INTERVAL_MS', schema: positiveInt, default: '30000', doc: 'WebSocket ping interval; no pong by the next ping terminates' }),
  syncIntervalMs: opt({ env: 'SYNC_INTERVAL_MS', schema: positiveInt, default: String(DEFAULT_SYNC_INTERVAL_MS), doc: 'how often clients sync (sent in registered)' }),
  idempotencyWindowMs: opt({ env: 'IDEMPOTENCY_WINDOW_MS', schema: positiveInt, default: '3600000', doc: 'how long a (sender, id) maps to its first msgId' }),
  discoveryCacheMs: opt({ env: 'DISCOVERY_CACHE_MS', schema: nonNegativeInt, default: '1000', doc: 'how long a lookup answer from SvDiscover is reused while its change notifications are not received (0: ask every time); new connections get sync.hint after this long' }),
  discoveryCacheSubscribedMs: opt({ env: 'DISCOVERY_CACHE_SUBSCRIBED_MS', schema: nonNegativeInt, default: '60000', doc: 'how long a lookup answer is reused while SvDiscover\'s change notifications arrive (Redis pub/sub on REDIS_URL under KEY_PREFIX, as SvDiscover\'s; each drops the answers it names); 0: do not subscribe, DISCOVERY_CACHE_MS always' }),
  heartbeatMs: opt({ env: 'HEARTBEAT_MS', schema: positiveInt, default: '3000', doc: 'discovery lease heartbeat (keep well under the lease); while SvDiscover is unreachable, every 500 ms at most' }),
  publishTimeoutMs: opt({ env: 'PUBLISH_TIMEOUT_MS', schema: positiveInt, default: '5000', doc: 'broker confirm wait before answering unavailable' }),
  publishChannels: opt({ env: 'PUBLISH_CHANNELS', schema: positiveInt, default: '4', doc: 'confirm channels in the publish pool' }),
  requestTimeoutMs: opt({ env: 'REQUEST_TIMEOUT_MS', schema: positiveInt, default: '3000', doc: 'timeout of calls to SvDiscover and SvPersist' }),
  forwardTimeoutMs: opt({ env: 'FORWARD_TIMEOUT_MS', schema: positiveInt, default: '2000', doc: 'timeout of a forward to a peer instance' }),
  flushIntervalMs: opt({ env: 'FLUSH_INTERVAL_MS', schema: nonNegativeInt.max(100, 'must be at most 100'), default: '4', doc: 'least time between two flushes of each internal batch (idempotency reservations, frames for a peer; publishes have PUBLISH_INTERVAL_MS): after a quiet spell a batch goes out at once, under load they grow instead of costing a round trip each; 0: every tick' }),
  publishIntervalMs: opt({ env: 'PUBLISH_INTERVAL_MS', schema: nonNegativeInt.max(100, 'must be at most 100'), default: '16', doc: 'least time between two publishes to the broker (FLUSH_INTERVAL_MS paces the rest): at low and middle rates longer spacing puts more messages in one publish, which costs the broker and SvPersist far less per message, for at most this much more ack latency; live delivery never waits for it' }),
  maxPendingSends: opt({ env: 'MAX_PENDING_SENDS', schema: positiveInt, default: '5000', doc: 'sends being accepted at once on this instance (idempotency check, broker confirm); beyond it a send is answered rate_limited at once instead of queueing into timeouts' }),
  maxBufferedBytes: opt({ env: 'MAX_BUFFERED_BYTES', schema: positiveInt, default: '1048576', doc: 'send buffer of a slow client before close 1013' }),
  rateLimitPerSec: opt({ env: 'RATE_LIMIT_PER_SEC', schema: positiveInt, default: '20', doc: 'sustained sends per user per second (per instance)' }),
  emptyAfterMs: opt({ env: 'EMPTY_AFTER_MS', schema: positiveInt, default: '60000', doc: "SvPersist's EMPTY_AFTER_MS (set both alike): a resend of a message first accepted longer ago and not stored takes a new position" }),
  roomRateLimitPerSec: opt({ env: 'ROOM_RATE_LIMIT_PER_SEC', schema: positiveInt, default: '100', doc: 'messages per room per second, across every gateway (a burst as large); more are answered rate_limited' }),
  presenceWatch: opt({ env: 'PRESENCE_WATCH', schema: z.enum(['anyone', 'shared'], { message: "must be 'anyone' or 'shared'" }), default: 'anyone', doc: "who may watch whom with presence.watch: anyone, or only users who share a conversation (a direct message either way, or a room both are in; forbidden otherwise)" }),
  presenceReconcileMs: opt({ env: 'PRESENCE_RECONCILE_MS', schema: positiveInt, default: '1000', doc: 'every watched user is asked again this often, so a lost change notification or a crashed instance (its lease lapsed) is shown within the lease plus this' }),
  rateLimitBurst: opt({ env: 'RATE_LIMIT_BURST', schema: positiveInt, default: '60', doc: 'burst of sends per user' }),
  maxConnectionsPerUser: opt({ env: 'MAX_CONNECTIONS_PER_USER', schema: positiveInt, default: '20', doc: 'connections of one user on one instance (4429 beyond)' }),
  maxConnectionsPerIp: opt({ env: 'MAX_CONNECTIONS_PER_IP', schema: positiveInt, default: '200', doc: 'connections from one address on one instance (HTTP 429 beyond)' }),
  maxBadFrames: opt({ env: 'MAX_BAD_FRAMES', schema: nonNegativeInt, default: '10', doc: 'bad frames tolerated per minute before close 1008' }),
  statsLogIntervalMs: opt({ env: 'STATS_LOG_INTERVAL_MS', schema: nonNegativeInt, default: '60000', doc: 'interval of the info line summing up connections opened, closed and refused (0: off; per-connection lines are debug)' }),
};

export type WsConfig = ConfigOf<typeof wsSpec>;

export function loadWsConfig(options: LoadOptions): WsConfig {
  const cfg = loadConfig(wsSpec, options);
  if (!cfg.jwtSecret && !cfg.jwtPublicKey && !cfg.jwtJwksUrl) throw new ConfigError('invalid configuration:\n  - set JWT_SECRET (HS256), JWT_PUBLIC_KEY or JWT_JWKS_URL (RS256/ES256): clients cannot be authenticated without one');
  checkProductionSecrets(cfg);
  return cfg;
}
