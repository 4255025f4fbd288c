/** Where the real services are for tests: the environment, else the local defaults. */
export function services(): { redisUrl: string; amqpUrl: string; databaseUrl: string } {
  return {
    redisUrl: process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379',
    amqpUrl: process.env.TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
    databaseUrl: process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
  };
}
