/**
 * One AMQP connection that comes back by itself. It connects with the shared
 * socket options and a connection_name, lets its owner open channels on each
 * new connection (setup), and on any loss gives the whole connection up and
 * connects again with backoff. The publisher and the writer each hold one;
 * what they do on the channels stays theirs.
 */
import amqp, { type Channel, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { AMQP_SOCKET_OPTIONS, amqpConnectFailure } from './amqp';
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
  url: string;
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
}

export interface AmqpConnection {
  /** host:port of the url (no credentials), for messages */
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

export function createAmqpConnection(deps: AmqpConnectionDeps): AmqpConnection {
  const { log } = deps;
  const host = new URL(deps.url).host;
  const socketOptions = { ...AMQP_SOCKET_OPTIONS, timeout: deps.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS, clientProperties: { connection_name: deps.name } };
  const purpose = deps.purpose ? `; ${deps.purpose}` : '';
  let current: Session | undefined;
  let isClosed = false;
  let attempt = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let connecting: Promise<void> | undefined;
  let readyWaiters: Waiter[] = [];

  const shouldWarn = () => attempt % WARN_EVERY_ATTEMPTS === 0;

  function openSession(connection: ChannelModel): Session {
    const session: Session = {
      connection,
      isLost: false,
      isUp: false,
      createChannel: (options) => watch(session, connection.createChannel(), options),
      createConfirmChannel: (options) => watch(session, connection.createConfirmChannel(), options),
      lose: () => lose(session),
    };
    connection.on('error', (err: Error) => log.warn({ host, err: errorMessage(err) }, 'broker connection error'));
    connection.on('close', () => lose(session));
    return session;
  }

  async function watch<C extends Channel>(session: Session, opening: Promise<C>, options: AmqpChannelOptions = {}): Promise<C> {
    const channel = await opening;
    channel.on('error', (err: Error) => log.warn({ host, err: errorMessage(err) }, `${options.label ?? 'broker'} channel error`));
    const { onClose } = options;
    channel.on('close', onClose ? () => onClose(channel) : () => lose(session));
    return channel;
  }

  async function connect(): Promise<void> {
    retryTimer = undefined;
    if (isClosed) return;
    let connection: ChannelModel;
    try {
      connection = await amqp.connect(deps.url, socketOptions);
    } catch (err) {
      if (shouldWarn()) log.warn({ host, err: errorMessage(err) }, amqpConnectFailure(host, err));
      else log.debug({ host, err: errorMessage(err) }, 'broker connect attempt failed; retrying');
      scheduleReconnect();
      return;
    }
    const session = openSession(connection);
    try {
      if (isClosed) throw new Error('closed while connecting');
      await deps.setup(session);
      if (session.isLost) throw new Error('the connection closed while being set up');
    } catch (err) {
      if (!isClosed && shouldWarn()) log.warn({ host, err: errorMessage(err) }, `could not set up ${deps.purpose ?? 'the broker connection'}; retrying`);
      lose(session);
      return;
    }
    session.isUp = true;
    current = session;
    // Closed during setup: close() waits for this connect, then drains and closes it like any other.
    if (isClosed) return;
    log.info({ host, ...deps.logFields }, attempt > 0 ? `broker connection restored${purpose}` : `connected to the broker${purpose}`);
    attempt = 0;
    const waiters = readyWaiters;
    readyWaiters = [];
    for (const w of waiters) w.resolve();
  }

  function scheduleReconnect(): void {
    if (isClosed || retryTimer) return;
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
    if (wasUp) log.warn({ host }, `lost the connection to RabbitMQ at ${host}; reconnecting`);
    scheduleReconnect();
  }

  startConnecting();

  return {
    host,
    isConnected: () => current !== undefined,
    ready() {
      if (current) return Promise.resolve();
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
    return new UnavailableError(`closed: no longer connecting to RabbitMQ at ${host}`);
  }
}
