/** Used by .ci/run and `npm test`: make sure Redis, RabbitMQ and Postgres answer (starting local ones). */
import { ensureServices } from './lib/services';
import { scriptEnv } from './lib/env';

async function main(): Promise<void> {
  const env = scriptEnv();
  const problems = await ensureServices(
    {
      redisUrl: env.TEST_REDIS_URL ?? env.REDIS_URL ?? 'redis://127.0.0.1:6379',
      amqpUrl: env.TEST_AMQP_URL ?? env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
      databaseUrl: env.TEST_DATABASE_URL ?? env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    },
    (line) => process.stdout.write(`services: ${line}\n`),
  );
  for (const p of problems) process.stderr.write(`services: ${p}\n`);
  process.exit(problems.length ? 1 : 0);
}
void main();
