/** The reconnecting AMQP connection against the real RabbitMQ. */
import type { Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, it, expect } from 'vitest';
import { createAmqpConnection, type AmqpConnection, type AmqpConnectionDeps, type AmqpSession } from '../src/amqp-connection';
import { TopologyMismatchError } from '../src/amqp';
import { services } from '../../test/services';
import { captureLog, eventually } from '../../test/helpers';

const DEAD_RABBITMQ = 'amqp://guest:guest@127.0.0.1:1';

const messages = (lines: Record<string, unknown>[]) => lines.map((l) => String(l.msg));

/** Cuts the TCP connection under amqplib, as a reset from a restarting broker would (a destroy without an error goes unnoticed until heartbeats). */
function breakSocket(session: AmqpSession): void {
  (session.connection.connection as unknown as { stream: Socket }).stream.destroy(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }));
}

const opened: AmqpConnection[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()));
});

function connect(deps: Partial<AmqpConnectionDeps> & Pick<AmqpConnectionDeps, 'log'>) {
  const sessions: AmqpSession[] = [];
  const lost: AmqpSession[] = [];
  const connection = createAmqpConnection({
    url: services().amqpUrl,
    name: `shared test ${randomBytes(3).toString('hex')}`,
    async setup(session) {
      sessions.push(session);
      await session.createChannel();
    },
    onLost: (session) => lost.push(session),
    ...deps,
  });
  opened.push(connection);
  return { connection, sessions, lost };
}

describe('createAmqpConnection', () => {
  it('connects, runs setup once, and ready() resolves; close() is idempotent and closes the connection', async () => {
    const { log, lines } = captureLog();
    const { connection, sessions, lost } = connect({ log, purpose: 'testing', logFields: { queue: 'q' } });
    await connection.ready();
    expect(connection.isConnected()).toBe(true);
    expect(connection.host).toBe(new URL(services().amqpUrl).host);
    expect(sessions).toHaveLength(1);
    expect(lines.find((l) => l.msg === 'connected to the broker; testing')).toMatchObject({ level: 'info', host: connection.host, queue: 'q' });

    const closedEvent = new Promise<void>((resolve) => (sessions[0] as AmqpSession).connection.once('close', () => resolve()));
    const first = connection.close();
    expect(connection.close()).toBe(first);
    await first;
    await closedEvent;
    await connection.close();
    expect(connection.isConnected()).toBe(false);
    expect(lost).toEqual(sessions);
    expect((sessions[0] as AmqpSession).isLost).toBe(true);
    await expect(connection.ready()).rejects.toThrow(/closed/);
    // a planned close is not a lost connection
    expect(lines.filter((l) => l.level === 'warn')).toEqual([]);
  });

  it('a connection cut under it is given up once, said once, and set up again on a new connection', async () => {
    const { log, lines } = captureLog();
    const { connection, sessions, lost } = connect({ log });
    await connection.ready();
    const first = sessions[0] as AmqpSession;
    breakSocket(first);
    await eventually(() => expect(lost).toEqual([first]));
    await eventually(() => expect(sessions).toHaveLength(2));
    await connection.ready();
    expect(connection.isConnected()).toBe(true);
    expect(first.isLost).toBe(true);
    expect((sessions[1] as AmqpSession).isLost).toBe(false);
    expect(messages(lines)).toEqual(expect.arrayContaining([`lost the connection to RabbitMQ at ${connection.host}; reconnecting`, 'broker connection restored']));
    expect(messages(lines).filter((m) => m.startsWith('lost the connection'))).toHaveLength(1);
  });

  it('a channel closed by the broker gives the whole connection up, unless its owner can do without it', async () => {
    const { log } = captureLog();
    let onClose = 0;
    let optional: Awaited<ReturnType<AmqpSession['createChannel']>> | undefined;
    let needed: Awaited<ReturnType<AmqpSession['createChannel']>> | undefined;
    const { connection, sessions, lost } = connect({
      log,
      async setup(session) {
        sessions.push(session);
        optional = await session.createChannel({ onClose: () => onClose++ });
        needed = await session.createChannel();
      },
    });
    await connection.ready();
    const missing = `shared.test.missing.${randomBytes(4).toString('hex')}`;
    // 404 NOT_FOUND closes the channel from the broker side
    await expect(optional?.checkQueue(missing)).rejects.toThrow(/NOT_FOUND/);
    await eventually(() => expect(onClose).toBe(1));
    expect(lost).toEqual([]);
    expect(connection.isConnected()).toBe(true);

    await expect(needed?.checkQueue(missing)).rejects.toThrow(/NOT_FOUND/);
    await eventually(() => expect(lost).toHaveLength(1));
    await eventually(() => expect(sessions).toHaveLength(2));
    await connection.ready();
  });

  it('a setup that fails gives its connection up and is tried again', async () => {
    const { log, lines } = captureLog();
    let tries = 0;
    const { connection, lost } = connect({
      log,
      async setup() {
        tries++;
        if (tries === 1) throw new Error('topology refused');
      },
    });
    await connection.ready();
    expect(tries).toBe(2);
    expect(lost).toHaveLength(1);
    expect(lines.find((l) => l.msg === 'could not set up the broker connection; retrying')).toMatchObject({ level: 'warn', err: 'topology refused' });
  });

  it('close() drains on the live connection before closing it, and waits for a setup under way', async () => {
    const { log } = captureLog();
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const events: string[] = [];
    let session: AmqpSession | undefined;
    const { connection } = connect({
      log,
      async setup(s) {
        session = s;
        events.push('setup');
        await gate;
        events.push('setup done');
      },
      async drain() {
        // still usable here: in-flight work can finish on it
        const ch = await session?.connection.createChannel();
        await ch?.close();
        events.push(`drain (lost: ${String(session?.isLost)})`);
      },
    });
    await eventually(() => expect(events).toEqual(['setup']));
    const closed = connection.close();
    await expect(connection.ready()).rejects.toThrow(/closed/);
    release();
    await closed;
    expect(events).toEqual(['setup', 'setup done', 'drain (lost: false)']);
    expect(session?.isLost).toBe(true);
  });

  it('an unreachable broker is said once, not per retry, and close() stops the retries', async () => {
    const { log, lines } = captureLog('test', 'debug');
    const { connection } = connect({ log, url: DEAD_RABBITMQ });
    const ready = connection.ready();
    await eventually(() => expect(messages(lines)).toContain('cannot reach RabbitMQ at 127.0.0.1:1; retrying'));
    // several retries after the first, each said at debug only
    await eventually(() => expect(messages(lines).filter((m) => m === 'broker connect attempt failed; retrying').length).toBeGreaterThanOrEqual(2));
    expect(connection.isConnected()).toBe(false);
    await connection.close();
    await expect(ready).rejects.toThrow(/closed/);
    expect(messages(lines).filter((m) => m.startsWith('cannot reach'))).toHaveLength(1);
  });

  it('with several nodes, one that does not answer is passed over at once, and a lost node is followed by the next one', async () => {
    const { log, lines } = captureLog();
    const real = new URL(services().amqpUrl);
    // Two names of the one local broker stand for two nodes; the dead one is tried too.
    const other = new URL(real);
    other.hostname = 'localhost';
    const { connection, sessions } = connect({ log, url: [DEAD_RABBITMQ, real.toString(), other.toString()] });
    const started = Date.now();
    await connection.ready();
    expect(Date.now() - started).toBeLessThan(3000);
    const first = connection.host;
    expect([real.host, other.host]).toContain(first);
    breakSocket(sessions[0] as AmqpSession);
    await eventually(() => expect(sessions.length).toBeGreaterThanOrEqual(2));
    await connection.ready();
    // the next node after the lost one (possibly the dead one first, then the one after it)
    expect(connection.host).not.toBe(first);
    expect(messages(lines).filter((m) => m.startsWith(`lost the connection to RabbitMQ at ${first}; reconnecting to `))).toHaveLength(1);
  });

  it('a setup error no retry can mend stops reconnecting: ready() rejects with its one line and onFatal hears it once', async () => {
    const { log, lines } = captureLog();
    const fatal: Error[] = [];
    let tries = 0;
    const { connection } = connect({
      log,
      async setup() {
        tries++;
        throw new TopologyMismatchError('QUEUE_PARTITIONS=4 but the broker\'s queues were declared with 2: set the same QUEUE_PARTITIONS on every gateway and SvPersist');
      },
      onFatal: (err) => fatal.push(err),
    });
    await expect(connection.ready()).rejects.toThrow(/^QUEUE_PARTITIONS=4 but/);
    expect(fatal).toHaveLength(1);
    expect(tries).toBe(1);
    expect(connection.isConnected()).toBe(false);
    expect(lines.filter((l) => l.level === 'error').map((l) => l.msg)).toEqual([fatal[0]?.message]);
  });
});
