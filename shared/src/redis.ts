/**
 * The Redis connection: reconnects forever with capped backoff, rejects
 * commands at once while disconnected (node-redis would otherwise queue them
 * and an HTTP request would hang for the whole outage), bounds every command
 * with a timeout (a hung Redis), and logs outages once, not once per retry.
 */
import { createClient } from 'redis';
import { backoffMs } from './time';
import { errorMessage, isLoginRefused } from './errors';
import type { Logger } from './log';
import { createLogThrottle } from './log-throttle';

export type RedisClient = ReturnType<typeof createClient>;

export interface RedisConnectionDeps {
  url: string;
  log: Logger;
  /** timeout of one command and of one connection attempt */
  commandTimeoutMs: number;
  /** longest wait between two reconnection attempts */
  maxReconnectDelayMs?: number;
}

export interface RedisConnection {
  readonly client: RedisClient;
  /** the URL without its password, for messages */
  readonly url: string;
  close(): Promise<void>;
}

const STILL_DOWN_LOG_INTERVAL_MS = 30_000;

export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<invalid url>';
  }
}

/** Creates the client and starts connecting in the background; it never gives up until close(). */
export function createRedisConnection(deps: RedisConnectionDeps): RedisConnection {
  const { log } = deps;
  const url = redactUrl(deps.url);
  const maxDelayMs = deps.maxReconnectDelayMs ?? 5_000;
  const client = createClient({
    url: deps.url,
    disableOfflineQueue: true,
    commandOptions: { timeout: deps.commandTimeoutMs },
    socket: {
      connectTimeout: deps.commandTimeoutMs,
      reconnectStrategy: (retries: number) => backoffMs(retries, 100, maxDelayMs),
    },
  });

  let hasBeenUp = false;
  let isDown = false;
  const throttle = createLogThrottle(STILL_DOWN_LOG_INTERVAL_MS);
  client.on('error', (err: unknown) => {
    const reason = errorMessage(err);
    if (!isDown) {
      isDown = true;
      throttle.reset();
      throttle.shouldLog();
      if (isLoginRefused(err)) log.warn(`redis at ${url} refused the login (${reason}); check the user and password in REDIS_URL; retrying with backoff`);
      else if (hasBeenUp) log.warn(`redis at ${url} is down (${reason}); reconnecting with backoff`);
      else log.warn(`redis at ${url} is not reachable (${reason}); retrying with backoff`);
    } else if (throttle.shouldLog()) {
      log.warn({ attempts: throttle.count }, `redis at ${url} is still unreachable (${reason})`);
    } else {
      log.debug({ attempts: throttle.count }, `redis at ${url}: ${reason}`);
    }
  });
  client.on('ready', () => {
    if (!hasBeenUp || isDown) log.info(`redis at ${url} is up`);
    hasBeenUp = true;
    isDown = false;
  });

  // The reconnect strategy never gives up, so this settles only once connected or
  // when close() destroys the client; failures are reported through 'error' above.
  client.connect().catch(() => undefined);

  let closing: Promise<void> | undefined;
  return {
    client,
    url,
    close() {
      closing ??= (async () => {
        if (!client.isOpen) return;
        if (!client.isReady) {
          client.destroy();
          return;
        }
        // close() waits for the replies still pending, which a frozen Redis never sends
        let timer: NodeJS.Timeout | undefined;
        const expired = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, deps.commandTimeoutMs);
        });
        await Promise.race([client.close().catch(() => undefined), expired]);
        clearTimeout(timer);
        if (client.isOpen) client.destroy();
      })();
      return closing;
    },
  };
}
