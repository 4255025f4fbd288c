/**
 * One AMQP connection that comes back by itself. It connects with the shared
 * socket options and a connection_name, lets its owner open channels on each
 * new connection (setup), and on any loss gives the whole connection up and
 * connects again. With several nodes (AMQP_URLS) a failed or lost node is
 * followed at once by the next one in the list; only a whole round of failed
 * nodes waits a backoff. The publisher, the writers and the notifier each hold
 * one; what they do on the channels stays theirs.
 */
import amqp, { type Channel, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { AMQP_SOCKET_OPTIONS, amqpConnectFailure, isFatalBrokerError } from './amqp';
import { UnavailableError, errorMessage } from './errors';
import { backoffMs } from './time';
import { once } from './lifecycle';
import type { Logger } from './log';

export interface AmqpChannelOptions {
  /** names the channel in its error line: 'dead-letter' logs "dead-letter channel error" */
  label?: string;
  /** the owner can do without this channel: its close calls this instead of giving the connection up */
  onClose?: (channel: Channel) => void;
}

/** One connection, from connect to loss, as setup and onLost see it. */
export interface AmqpSession {
  readonly connection: ChannelModel;
  /** set once this connection is given up (lost, failed in setup, or closed); a new one replaces it */
  readonly isLost: boolean;
  /** a channel with an error listener; its close gives the whole connection up unless options.onClose is set */
  createChannel(options?: AmqpChannelOptions): Promise<Channel>;
  createConfirmChannel(options?: AmqpChannelOptions): Promise<ConfirmChannel>;
  /** gives this connection up and connects again (say, the broker cancelled a consumer); a no-op once lost */
  lose(): void;
}

export interface AmqpConnectionDeps {
  /** the nodes of the cluster (AMQP_URLS), tried in turn from a random one; a single URL is a one-node list */
  url: string | readonly string[];
  /** connection_name in the broker's list of connections */
  name: string;
  log: Logger;
  /** opens the channels (and asserts the topology) on each new connection; a throw gives it up and retries */
  setup(session: AmqpSession): Promise<void>;
  /** a session is given up (lost, failed in setup, or closed): drop what setup installed; runs once, before any reconnect */
  onLost?(session: AmqpSession): void;
  /** close() runs it once reconnecting has stopped and a connect under way is done, before the connection goes: finish in-flight work */
  drain?(): Promise<void>;
  /** a broker that accepts TCP but never answers must not stall a reconnect (or close) for long */
  connectTimeoutMs?: number;
  /** what the connection is for, added to its connected lines: "connected to the broker; consuming" */
  purpose?: string;
  /** more fields of the connected lines, next to host */
  logFields?: Record<string, unknown>;
  /**
   * setup threw an error no retry can mend (isFatalBrokerError: the broker's queues differ from
   * this version's settings): reconnecting stops and ready() rejects with it; the service exits
   */
  onFatal?(err: Error): void;
}

export interface AmqpConnection {
  /** host:port of the node in use, or of the first node before any connected (no credentials), for messages */
  readonly host: string;
  /** set up and not lost */
  isConnected(): boolean;
  /** resolves once set up; rejects with UnavailableError if closed first */
  ready(): Promise<void>;
  /** stops reconnecting, drains, closes the connection; idempotent */
  close(): Promise<void>;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
const BACKOFF_BASE_MS = 200;
const BACKOFF_MAX_MS = 5000;
/** a broker down for long logs its first failure, then every tenth retry */
const WARN_EVERY_ATTEMPTS = 10;

interface Session extends AmqpSession {
  isLost: boolean;
  isUp: boolean;
  /** the connection's close, once given up */
  closed?: Promise<void>;
}

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

/** host:port of an AMQP URL, never its credentials. */
export function amqpHost(url: string): string {
  return new URL(url).host;
}

export function createAmqpConnection(deps: AmqpConnectionDeps): AmqpConnection {
  const { log } = deps;
  const urls = typeof deps.url === 'string' ? [deps.url] : [...deps.url];
  if (urls.length === 0) throw new Error('no RabbitMQ URL given');
  const hosts = urls.map(amqpHost);
  // Processes of one service start on different nodes, so that the load spreads.
  let node = Math.floor(Math.random() * urls.length);
  let host = hosts[node] as string;
  const socketOptions = { ...AMQP_SOCKET_OPTIONS, timeout: deps.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS, clientProperties: { connection_name: deps.name } };
  const purpose = deps.purpose ? `; ${deps.purpose}` : '';
  let current: Session | undefined;
  let isClosed = false;
  /** whole rounds of failed nodes in a row */
  let attempt = 0;
  /** nodes failed in a row within this round */
  let failedInRound = 0;
  let fatal: Error | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let connecting: Promise<void> | undefined;
  let readyWaiters: Waiter[] = [];

  const shouldWarn = () => attempt % WARN_EVERY_ATTEMPTS === 0;

  function openSession(connection: ChannelModel, at: string): Session {
    const session: Session = {
      connection,
      isLost: false,
      isUp: false,
      createChannel: (options) => watch(session, at, connection.createChannel(), options),
      createConfirmChannel: (options) => watch(session, at, connection.createConfirmChannel(), options),
      lose: () => lose(session),
    };
    connection.on('error', (err: Error) => log.warn({ host: at, err: errorMessage(err) }, 'broker connection error'));
    connection.on('close', () => lose(session));
    return session;
  }

  async function watch<C extends Channel>(session: Session, at: string, opening: Promise<C>, options: AmqpChannelOptions = {}): Promise<C> {
    const channel = await opening;
    channel.on('error', (err: Error) => log.warn({ host: at, err: errorMessage(err) }, `${options.label ?? 'broker'} channel error`));
    const { onClose } = options;
    channel.on('close', onClose ? () => onClose(channel) : () => lose(session));
    return channel;
  }

  /** The node in use failed: the next one is tried at once, unless a whole round has failed. */
  function nextNode(): void {
    node = (node + 1) % urls.length;
    host = hosts[node] as string;
    failedInRound++;
  }

  async function connect(): Promise<void> {
    retryTimer = undefined;
    if (isClosed) return;
    const at = host;
    let connection: ChannelModel;
    try {
      connection = await amqp.connect(urls[node] as string, socketOptions);
    } catch (err) {
      if (shouldWarn()) log.warn({ host: at, err: errorMessage(err) }, amqpConnectFailure(at, err));
      else log.debug({ host: at, err: errorMessage(err) }, 'broker connect attempt failed; retrying');
      nextNode();
      scheduleReconnect();
      return;
    }
    const session = openSession(connection, at);
    try {
      if (isClosed) throw new Error('closed while connecting');
      await deps.setup(session);
      if (session.isLost) throw new Error('the connection closed while being set up');
    } catch (err) {
      if (isFatalBrokerError(err) && !isClosed) {
        stopOnFatal(err);
        lose(session);
        return;
      }
      if (!isClosed && shouldWarn()) log.warn({ host: at, err: errorMessage(err) }, `could not set up ${deps.purpose ?? 'the broker connection'}; retrying`);
      nextNode();
      lose(session);
      return;
    }
    session.isUp = true;
    current = session;
    // Closed during setup: close() waits for this connect, then drains and closes it like any other.
    if (isClosed) return;
    log.info({ host: at, ...deps.logFields }, attempt > 0 || failedInRound > 0 ? `broker connection restored${purpose}` : `connected to the broker${purpose}`);
    attempt = 0;
    failedInRound = 0;
    const waiters = readyWaiters;
    readyWaiters = [];
    for (const w of waiters) w.resolve();
  }

  function stopOnFatal(err: Error): void {
    fatal = err;
    isClosed = true;
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = undefined;
    for (const w of readyWaiters) w.reject(err);
    readyWaiters = [];
    log.error({ host }, err.message);
    deps.onFatal?.(err);
  }

  function scheduleReconnect(): void {
    if (isClosed || retryTimer) return;
    // Another node is left in this round: try it now. A whole round failed: back off.
    if (failedInRound > 0 && failedInRound < urls.length) {
      retryTimer = setTimeout(startConnecting, 0);
      return;
    }
    failedInRound = 0;
    retryTimer = setTimeout(startConnecting, backoffMs(attempt++, BACKOFF_BASE_MS, BACKOFF_MAX_MS));
  }

  function startConnecting(): void {
    const run = connect();
    connecting = run;
    void run.finally(() => {
      if (connecting === run) connecting = undefined;
    });
  }

  /** The connection or a channel went away: the session goes as a whole, and a new one is set up. */
  function lose(session: Session): void {
    if (session.isLost) return;
    const wasUp = session.isUp;
    session.isLost = true;
    session.isUp = false;
    session.closed = session.connection.close().catch(() => undefined);
    if (current === session) current = undefined;
    deps.onLost?.(session);
    if (isClosed) return;
    if (wasUp) {
      const lostAt = host;
      // A lost node is likely down: the next connect goes to another one (with one node, the same).
      if (urls.length > 1) nextNode();
      log.warn({ host: lostAt }, urls.length > 1 ? `lost the connection to RabbitMQ at ${lostAt}; reconnecting to ${host}` : `lost the connection to RabbitMQ at ${lostAt}; reconnecting`);
    }
    scheduleReconnect();
  }

  startConnecting();

  return {
    get host() {
      return host;
    },
    isConnected: () => current !== undefined,
    ready() {
      if (current) return Promise.resolve();
      if (fatal) return Promise.reject(fatal);
      if (isClosed) return Promise.reject(closedError());
      return new Promise<void>((resolve, reject) => readyWaiters.push({ resolve, reject }));
    },
    close: once(async () => {
      isClosed = true;
      if (retryTimer) clearTimeout(retryTimer);
      retryTimer = undefined;
      const err = closedError();
      for (const w of readyWaiters) w.reject(err);
      readyWaiters = [];
      // A connect under way finishes first: it gives up what it opened, or leaves it to be drained.
      await connecting;
      try {
        await deps.drain?.();
      } finally {
        const session = current;
        if (session) {
          lose(session);
          await session.closed;
        }
      }
    }),
  };

  function closedError(): UnavailableError {
    return new UnavailableError(`closed: no longer connecting to RabbitMQ at ${hosts.join(', ')}`);
  }
}
