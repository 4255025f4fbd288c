/**
 * npm run notify:replay [-- --limit N]: puts the dead-lettered notification events (QUEUE_PREFIX
 * + notify.dead) back on the notify queue of the broker at AMQP_URLS' first node or AMQP_URL (environment or .env), once
 * the receiver is fixed; each keeps its eventId. See docs/OPERATIONS.md, Notifications.
 */
import { parseArgs } from 'node:util';
import { replayDeadNotifications } from '../SvPersist/src/notify-replay';
import { notifyTopology } from '../SvPersist/src/notify-topology';
import { scriptEnv, die } from './lib/env';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { limit: { type: 'string' } } });
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (limit !== undefined && (!Number.isInteger(limit) || limit <= 0)) die('notify:replay: --limit must be a whole number above 0');
  const env = scriptEnv();
  const topology = notifyTopology(env.QUEUE_PREFIX ?? 'simplechat.', undefined, env.QUEUE_TYPE === 'classic' ? 'classic' : 'quorum');
  const firstNode = env.AMQP_URLS?.split(',')[0]?.trim();
  const replayed = await replayDeadNotifications({ amqpUrl: firstNode || (env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672'), topology, ...(limit === undefined ? {} : { limit }) });
  process.stdout.write(`notify:replay: ${replayed} event(s) put back from ${topology.deadLetterQueue} on ${topology.queue}\n`);
}
main().catch((err: unknown) => die(`notify:replay: ${err instanceof Error ? err.message : String(err)}`));
