import { createLogger, createMetrics, printHelpIfAsked, failStartup, installSignalHandlers, checkBrokerNodes, brokerUrls } from '@simplechat/shared';
import { loadPersistConfig, persistSpec } from './config';
import { createPersistService, type PersistService } from './app';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  printHelpIfAsked('SvPersist: stores queued messages in Postgres and serves history and sync\n\nUsage: node SvPersist/dist/main.js [options]', persistSpec, argv);
  let config;
  try {
    config = loadPersistConfig({ argv });
  } catch (err) {
    failStartup('SvPersist', err);
  }
  const log = createLogger('SvPersist', config.logLevel);
  let service: PersistService | undefined;
  try {
    await checkBrokerNodes(brokerUrls(config), { log });
    // Nothing unacked is lost by exiting: the broker hands it to the next consumer.
    const onFatal = (err: Error) => failStartup('SvPersist', err);
    service = createPersistService({ config, log, metrics: createMetrics({ service: 'SvPersist', processMetrics: true }), onFatal });
    const port = await service.listen(config.port, config.host);
    installSignalHandlers(service, log, config.shutdownTimeoutMs);
    log.info({ host: config.host, port, queues: `${config.queuePrefix}messages.p0..p${config.queuePartitions - 1}`, queueType: config.queueType }, 'SvPersist listening');
  } catch (err) {
    await service?.close().catch(() => undefined);
    failStartup('SvPersist', err);
  }
}

void main();
