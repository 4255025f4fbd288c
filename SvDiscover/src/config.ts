import {
  opt,
  commonSpec,
  port,
  positiveInt,
  urlOf,
  nonEmpty,
  keyPrefix,
  loadConfig,
  checkProductionSecrets,
  type ConfigOf,
  type LoadOptions,
  optionalString,
  redisClusterNodesOption,
} from '@simplechat/shared';


export const discoverSpec = {
  ...commonSpec,
  port: opt({ env: 'DISCOVER_PORT', flag: 'port', schema: port, default: '3001', doc: 'port of the HTTP API (/internal and /health)' }),
  host: opt({ env: 'DISCOVER_HOST', flag: 'host', schema: nonEmpty, default: '127.0.0.1', doc: 'address to bind' }),
  redisUrl: opt({ env: 'REDIS_URL', schema: urlOf('redis:', 'rediss:'), default: 'redis://127.0.0.1:6379', doc: 'Redis holding the registry (6.2 or newer)' }),
  redisClusterNodes: redisClusterNodesOption,
  keyPrefix: opt({ env: 'KEY_PREFIX', schema: keyPrefix, default: 'simplechat:', doc: 'prefix of every Redis key' }),
  // a lease shorter than a few Redis round trips could never be renewed in time
  leaseMs: opt({ env: 'LEASE_MS', schema: positiveInt.min(100, 'must be at least 100'), default: '10000', doc: 'lease of an instance: the longest a dead instance is still returned by lookups' }),
  sweepIntervalMs: opt({ env: 'SWEEP_INTERVAL_MS', schema: positiveInt, default: '5000', doc: 'how often the claims of instances whose lease lapsed are removed' }),
  redisTimeoutMs: opt({ env: 'REDIS_TIMEOUT_MS', schema: positiveInt, default: '2000', doc: 'timeout of one Redis command or connection attempt' }),
};

export type DiscoverConfig = ConfigOf<typeof discoverSpec>;

export function loadDiscoverConfig(options: LoadOptions): DiscoverConfig {
  const cfg = loadConfig(discoverSpec, options);
  checkProductionSecrets(cfg);
  return cfg;
}
