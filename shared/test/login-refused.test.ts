/** Real services refusing a login are told apart from services that cannot be reached. */
import { describe, it, expect } from 'vitest';
import amqp from 'amqplib';
import { createClient } from 'redis';
import { amqpConnectFailure } from '../src/amqp';
import { isLoginRefused } from '../src/errors';

async function redisError(url: string): Promise<unknown> {
  const client = createClient({ url, socket: { reconnectStrategy: false } });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.ping();
  } catch (err) {
    return err;
  } finally {
    if (client.isOpen) client.destroy();
  }
  throw new Error(`${url} accepted the login`);
}

describe('a refused login', () => {
  it('RabbitMQ with a wrong password says to check AMQP_URL; an unreachable port says it cannot reach it', async () => {
    const refused = await amqp.connect('amqp://guest:not-the-password@127.0.0.1:5672').then(
      () => expect.unreachable('the login was accepted'),
      (err: unknown) => err,
    );
    expect(isLoginRefused(refused)).toBe(true);
    expect(amqpConnectFailure('127.0.0.1:5672', refused)).toBe('RabbitMQ at 127.0.0.1:5672 refused the login; check the user and password in AMQP_URL; retrying');
    const unreachable = await amqp.connect('amqp://guest:guest@127.0.0.1:1').then(
      () => expect.unreachable('port 1 answered'),
      (err: unknown) => err,
    );
    expect(isLoginRefused(unreachable)).toBe(false);
    expect(amqpConnectFailure('127.0.0.1:1', unreachable)).toBe('cannot reach RabbitMQ at 127.0.0.1:1; retrying');
  });

  it('Redis with a password it does not have is a refused login; a closed port is not', async () => {
    expect(isLoginRefused(await redisError('redis://:some-password@127.0.0.1:6379'))).toBe(true);
    expect(isLoginRefused(await redisError('redis://someone:some-password@127.0.0.1:6379'))).toBe(true);
    expect(isLoginRefused(await redisError('redis://127.0.0.1:1'))).toBe(false);
  });
});
