/** Used by .ci/run and `npm test`: make sure Redis, RabbitMQ and Postgres answer (starting local ones). */
import { ensureServices } from './lib/services';
import { scriptEnv } from './lib/env';

async function main(): Promise<void> {
  const env = scriptEnv();
  // The TEST_ variable wins; problems name the one that was used.
  const pick = (name: string, fallback: string) => {
    const variable = env[`TEST_${name}`] !== undefined ? `TEST_${name}` : name;
    return { variable, url: env[variable] ?? fallback };
  };
  const redis = pick('REDIS_URL', 'redis://127.0.0.1:6379');
  const amqp = pick('AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672');
  const database = pick('DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/postgres');
  const problems = await ensureServices(
    { redisUrl: redis.url, amqpUrl: amqp.url, databaseUrl: database.url },
    (line) => process.stdout.write(`services: ${line}\n`),
    { redisUrl: redis.variable, amqpUrl: amqp.variable, databaseUrl: database.variable },
  );
  for (const p of problems) process.stderr.write(`services: ${p}\n`);
  process.exit(problems.length ? 1 : 0);
}
void main();
