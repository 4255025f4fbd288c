/** The services as real processes: config errors, --help, production safety, generated docs. */
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import amqp from 'amqplib';
import { assertTopology, deleteTopology, topology } from '@simplechat/shared';
import { configurationMarkdown, envExample, SERVICES } from '../scripts/config-docs';
import { services } from './services';

const ROOT = resolve(__dirname, '..');
const MAINS = { SvWebsocket: 'SvWebsocket/dist/main.js', SvDiscover: 'SvDiscover/dist/main.js', SvPersist: 'SvPersist/dist/main.js' } as const;

function run(service: keyof typeof MAINS, args: string[], env: Record<string, string> = {}) {
  const res = spawnSync(process.execPath, [resolve(ROOT, MAINS[service]), ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ENV_FILE: '/nonexistent', ...env },
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { code: res.status, out: res.stdout, err: res.stderr };
}

describe('service startup', () => {
  for (const service of Object.keys(MAINS) as (keyof typeof MAINS)[]) {
    it(`${service}: bad settings stop startup with exit 1 and one message listing every problem, no stack trace`, () => {
      const r = run(service, ['--port', 'abc', '--log-level', 'loud']);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/invalid configuration/);
      expect(r.err).toMatch(/--port/);
      expect(r.err).toMatch(/LOG_LEVEL/);
      expect(r.err).toMatch(/INTERNAL_TOKEN/);
      expect(r.err).not.toMatch(/\n\s+at /);
    });

    it(`${service}: an unknown flag is named`, () => {
      const r = run(service, ['--bogus', '1']);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/bogus/);
    });

    it(`${service}: --help lists every option with its variable`, () => {
      const r = run(service, ['--help']);
      expect(r.code).toBe(0);
      const spec = SERVICES.find((s) => s.name === service)?.spec ?? {};
      for (const o of Object.values(spec)) expect(r.out).toContain(o.env);
    });

    it(`${service}: production refuses development or short secrets`, () => {
      const r = run(service, [], { ENVIRONMENT: 'production', INTERNAL_TOKEN: 'development-only-token', JWT_SECRET: 'short' });
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/production/);
      expect(r.err).toMatch(/INTERNAL_TOKEN/);
      expect(r.err).not.toMatch(/\n\s+at /);
    });
  }

  describe('SvPersist: notification settings refused at start with one line', () => {
    const productionSecrets = { ENVIRONMENT: 'production', INTERNAL_TOKEN: 'p'.repeat(40), DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none' };
    const cases: { name: string; env: Record<string, string>; says: RegExp }[] = [
      { name: 'a webhook URL that is not http(s)', env: { INTERNAL_TOKEN: 'x', NOTIFY_WEBHOOK_URL: 'ftp://hooks.example.com/in', NOTIFY_WEBHOOK_SECRET: 's'.repeat(40) }, says: /NOTIFY_WEBHOOK_URL .*http/ },
      { name: 'a webhook URL without a secret', env: { INTERNAL_TOKEN: 'x', NOTIFY_WEBHOOK_URL: 'https://hooks.example.com/in' }, says: /NOTIFY_WEBHOOK_SECRET .*not set/ },
      { name: 'a secret shorter than 32 bytes in production', env: { ...productionSecrets, NOTIFY_WEBHOOK_URL: 'https://hooks.example.com/in', NOTIFY_WEBHOOK_SECRET: 'short-secret' }, says: /production.*NOTIFY_WEBHOOK_SECRET is 12 bytes, too short/ },
      { name: 'NOTIFY_INCLUDE_BODY other than true or false', env: { INTERNAL_TOKEN: 'x', NOTIFY_INCLUDE_BODY: 'maybe' }, says: /NOTIFY_INCLUDE_BODY .*true or false/ },
    ];
    for (const { name, env, says } of cases) {
      it(name, () => {
        const r = run('SvPersist', [], env);
        expect(r.code).toBe(1);
        expect(r.err.trimEnd().split('\n')).toHaveLength(1);
        expect(r.err).toMatch(says);
        expect(r.err).not.toContain('s'.repeat(40));
      });
    }
  });

  describe('broker settings refused at start with one line, exit 1', () => {
    // ports of this suite's range: a service that gets as far as listening must not take another's
    const base = { PERSIST_PORT: '5721', WS_PORT: '5722', WS_HOST: '127.0.0.1', INTERNAL_TOKEN: 'x', DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none', JWT_SECRET: 'j'.repeat(40), REDIS_URL: 'redis://127.0.0.1:1', DISCOVER_URL: 'http://127.0.0.1:1', PERSIST_URL: 'http://127.0.0.1:1' };
    const cases: { name: string; env: Record<string, string>; says: RegExp }[] = [
      { name: 'a node list with a malformed URL', env: { AMQP_URLS: 'amqp://guest:guest@127.0.0.1:5672,rabbit2:5672' }, says: /^invalid configuration: AMQP_URLS \(--amqp-urls\) is invalid: must be comma-separated amqp:\/\/ or amqps:\/\/ URLs/ },
      { name: 'a node list naming a host that does not resolve', env: { AMQP_URLS: 'amqp://guest:guest@127.0.0.1:5672,amqp://guest:guest@no-such-node.invalid:5672' }, says: /^AMQP_URLS names a host that does not resolve \(no-such-node\.invalid\): fix AMQP_URLS$/ },
      { name: 'a node list where no node answers', env: { AMQP_URLS: 'amqp://guest:guest@127.0.0.1:1,amqp://guest:guest@127.0.0.1:2' }, says: /^none of the 2 RabbitMQ nodes in AMQP_URLS answered within 5000 ms \(127\.0\.0\.1:1: .*; 127\.0\.0\.1:2: .*\): start them or fix AMQP_URLS$/ },
      { name: 'QUEUE_PARTITIONS out of range', env: { QUEUE_PARTITIONS: '65' }, says: /QUEUE_PARTITIONS \(--queue-partitions\) = "65" is invalid: must be 1-64/ },
      { name: 'QUEUE_TYPE other than quorum or classic', env: { QUEUE_TYPE: 'stream' }, says: /QUEUE_TYPE \(--queue-type\) = "stream" is invalid: must be quorum or classic/ },
    ];
    for (const service of ['SvPersist', 'SvWebsocket'] as const) {
      for (const { name, env, says } of cases) {
        it(`${service}: ${name}`, () => {
          const r = run(service, [], { ...base, ...env });
          expect(r.code).toBe(1);
          const lines = r.err.trimEnd().split('\n');
          expect(lines).toHaveLength(1);
          expect((lines[0] as string).replace(/^[^:]+: /, '')).toMatch(says);
          expect(r.err).not.toContain('guest:guest');
        });
      }
    }

    it('a queue partition count that differs from the broker\'s queues', async () => {
      const prefix = `sctest.startup${Date.now().toString(36)}.`;
      const conn = await amqp.connect(services().amqpUrl);
      try {
        const ch = await conn.createChannel();
        await assertTopology(ch, topology(prefix, { partitions: 2 }));
        for (const service of ['SvPersist', 'SvWebsocket'] as const) {
          const r = run(service, [], { ...base, AMQP_URL: services().amqpUrl, QUEUE_PREFIX: prefix, QUEUE_PARTITIONS: '4' });
          expect(r.code, r.out).toBe(1);
          expect(r.err.trimEnd().split('\n')).toHaveLength(1);
          expect(r.err).toMatch(/: QUEUE_PARTITIONS=4 but the broker's queues were declared with 2: set the same QUEUE_PARTITIONS on every gateway and SvPersist/);
        }
        const r = run('SvPersist', [], { ...base, AMQP_URL: services().amqpUrl, QUEUE_PREFIX: prefix, QUEUE_PARTITIONS: '2', QUEUE_TYPE: 'classic' });
        expect(r.code).toBe(1);
        expect(r.err.trimEnd().split('\n')).toHaveLength(1);
        expect(r.err).toMatch(/: queue \S+ is quorum on the broker but QUEUE_TYPE=classic: set QUEUE_TYPE=quorum on every gateway and SvPersist/);
        await deleteTopology(ch, topology(prefix, { partitions: 4 }));
      } finally {
        await conn.close();
      }
    }, 60_000);
  });

  it('docs/CONFIGURATION.md and .env.example match the config schemas (npm run docs:config)', () => {
    expect(readFileSync(resolve(ROOT, 'docs/CONFIGURATION.md'), 'utf8')).toBe(configurationMarkdown());
    expect(readFileSync(resolve(ROOT, '.env.example'), 'utf8')).toBe(envExample());
  });

  it('.env sets only variables the config schemas know', () => {
    const known = new Set(SERVICES.flatMap((s) => Object.values(s.spec).map((o) => o.env)));
    const vars = readFileSync(resolve(ROOT, '.env'), 'utf8')
      .split('\n')
      .filter((l) => /^[A-Z_]+=/.test(l))
      .map((l) => l.split('=')[0] as string);
    expect(vars.filter((v) => !known.has(v))).toEqual([]);
  });
});
