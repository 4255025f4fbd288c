import { createLogger, createMetrics, printHelpIfAsked, failStartup, installSignalHandlers } from '@simplechat/shared';
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
    service = createPersistService({ config, log, metrics: createMetrics({ service: 'SvPersist', processMetrics: true }) });
    const port = await service.listen(config.port, config.host);
    installSignalHandlers(service, log, config.shutdownTimeoutMs);
    log.info({ host: config.host, port, queue: `${config.queuePrefix}messages` }, 'SvPersist listening');
  } catch (err) {
    await service?.close().catch(() => undefined);
    failStartup('SvPersist', err);
  }
}

void main();
