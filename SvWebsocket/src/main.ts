import { createLogger, createMetrics, printHelpIfAsked, failStartup, installSignalHandlers, checkBrokerNodes, brokerUrls, checkClusterNodes } from '@simplechat/shared';
import { loadWsConfig, wsSpec } from './config';
import { createWebsocketService } from './app';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  printHelpIfAsked('SvWebsocket: client WebSocket gateway of SimpleChat\n\nUsage: node SvWebsocket/dist/main.js [options]', wsSpec, argv);
  let config;
  try {
    config = loadWsConfig({ argv });
    await checkClusterNodes(config.redisClusterNodes);
  } catch (err) {
    failStartup('SvWebsocket', err);
  }
  const log = createLogger(`SvWebsocket/${config.instanceId}`, config.logLevel);
  try {
    const metrics = createMetrics({ service: 'SvWebsocket', instanceId: config.instanceId, processMetrics: true });
    await checkBrokerNodes(brokerUrls(config), { log });
    const name = `SvWebsocket ${config.instanceId}`;
    // Unacked work stays with the clients (they resend under the same id): nothing is lost by exiting.
    const service = await createWebsocketService(config, log, { metrics, onFatal: (err) => failStartup(name, err) });
    installSignalHandlers(service, log, config.shutdownTimeoutMs);
    log.info({ instanceId: service.instanceId, port: service.port, url: service.url, client: `http://localhost:${service.port}/client` }, 'SvWebsocket listening');
  } catch (err) {
    failStartup(`SvWebsocket ${config.instanceId}`, err);
  }
}

void main();
