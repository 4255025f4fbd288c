/** Process edge of SvDiscover: config, logger, Redis, HTTP server, signals. */
import { createLogger, createMetrics, printHelpIfAsked, failStartup, installSignalHandlers, checkClusterNodes, createRedisConnection } from '@simplechat/shared';
import { discoverSpec, loadDiscoverConfig, type DiscoverConfig } from './config';
import { createDiscoverService } from './app';

const SERVICE = 'SvDiscover';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  printHelpIfAsked(`${SERVICE}: which instances hold a live connection of a user (HTTP over Redis)`, discoverSpec, argv);
  let cfg: DiscoverConfig;
  try {
    cfg = loadDiscoverConfig({ argv, env: process.env });
    await checkClusterNodes(cfg.redisClusterNodes);
  } catch (err) {
    failStartup(SERVICE, err);
  }
  const log = createLogger(SERVICE, cfg.logLevel);

  // Connects in the background and keeps retrying: the HTTP server comes up
  // regardless and reports 503 on /health until Redis answers.
  const redis = createRedisConnection({ url: cfg.redisUrl, clusterNodes: cfg.redisClusterNodes, log: log.child({ component: 'redis' }), commandTimeoutMs: cfg.redisTimeoutMs });
  const service = createDiscoverService({
    redis: redis.client,
    redisUrl: redis.url,
    keyPrefix: cfg.keyPrefix,
    leaseMs: cfg.leaseMs,
    sweepIntervalMs: cfg.sweepIntervalMs,
    redisTimeoutMs: cfg.redisTimeoutMs,
    internalTokens: cfg.internalTokenPrevious ? [cfg.internalToken, cfg.internalTokenPrevious] : [cfg.internalToken],
    log,
    metrics: createMetrics({ service: SERVICE, processMetrics: true }),
  });
  const close = async (): Promise<void> => {
    await service.close();
    await redis.close();
  };

  let port: number;
  try {
    port = await service.listen(cfg.port, cfg.host);
  } catch (err) {
    await close();
    failStartup(SERVICE, err);
  }
  installSignalHandlers({ close }, log, cfg.shutdownTimeoutMs);
  log.info({ host: cfg.host, port, redis: redis.url, keyPrefix: cfg.keyPrefix, leaseMs: cfg.leaseMs, environment: cfg.environment }, `${SERVICE} listening on http://${cfg.host}:${port}`);
}

main().catch((err: unknown) => failStartup(SERVICE, err));
