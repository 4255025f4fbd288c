/**
 * The start-time look at the RabbitMQ nodes of AMQP_URLS, once per process
 * (main.ts), before any connection is made: a host that does not resolve is a
 * wrong setting and stops the service; with two or more nodes, the ones that
 * do not answer are named in one warning, and none answering stops it. A
 * single node that does not answer is waited for, as the services always did.
 */
import { lookup } from 'node:dns/promises';
import amqp from 'amqplib';
import { AMQP_SOCKET_OPTIONS } from './amqp';
import { ConfigError, errorMessage, isLoginRefused } from './errors';
import type { Logger } from './log';

export interface BrokerNodesCheck {
  /** nodes that answered (host:port) */
  answered: string[];
  /** nodes that did not, with why */
  silent: { host: string; reason: string }[];
}

const DEFAULT_TIMEOUT_MS = 5000;

async function probe(url: string, timeoutMs: number): Promise<void> {
  const connection = await amqp.connect(url, { ...AMQP_SOCKET_OPTIONS, timeout: timeoutMs, clientProperties: { connection_name: 'startup check' } });
  connection.on('error', () => undefined);
  await connection.close().catch(() => undefined);
}

export async function checkBrokerNodes(urls: readonly string[], deps: { log: Logger; timeoutMs?: number; setting?: string }): Promise<BrokerNodesCheck> {
  const setting = deps.setting ?? (urls.length > 1 ? 'AMQP_URLS' : 'AMQP_URL');
  const timeoutMs = deps.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const nodes = urls.map((u) => new URL(u));
  const unresolved: string[] = [];
  await Promise.all(
    nodes.map(async (n) => {
      try {
        await lookup(n.hostname);
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_NONAME') unresolved.push(n.hostname);
      }
    }),
  );
  if (unresolved.length > 0) throw new ConfigError(`${setting} names ${unresolved.length === 1 ? 'a host that does' : 'hosts that do'} not resolve (${unresolved.join(', ')}): fix ${setting}`);
  const result: BrokerNodesCheck = { answered: [], silent: [] };
  // One node is waited for by the connections themselves (it may be starting next to us).
  if (urls.length < 2) return { answered: nodes.map((n) => n.host), silent: [] };
  await Promise.all(
    urls.map(async (url, i) => {
      const host = (nodes[i] as URL).host;
      try {
        await probe(url, timeoutMs);
        result.answered.push(host);
      } catch (err) {
        result.silent.push({ host, reason: isLoginRefused(err) ? 'refused the login' : errorMessage(err) });
      }
    }),
  );
  const hosts = (list: { host: string }[]) => list.map((s) => s.host).join(', ');
  if (result.answered.length === 0) throw new ConfigError(`none of the ${urls.length} RabbitMQ nodes in ${setting} answered within ${timeoutMs} ms (${result.silent.map((s) => `${s.host}: ${s.reason}`).join('; ')}): start them or fix ${setting}`);
  if (result.silent.length > 0) deps.log.warn({ silent: result.silent }, `RabbitMQ ${result.silent.length === 1 ? 'node' : 'nodes'} ${hosts(result.silent)} of ${setting} did not answer at start; using the others (${result.answered.join(', ')})`);
  return result;
}
