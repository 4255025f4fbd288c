import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, checkClusterNodes } from '@simplechat/shared';
import { loadDiscoverConfig } from '../src/config';

const dir = mkdtempSync(join(tmpdir(), 'sc-discover-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function envFile(lines: string[]): string {
  const path = join(dir, `env-${Math.random().toString(36).slice(2)}`);
  writeFileSync(path, `${lines.join('\n')}\n`);
  return path;
}

describe('SvDiscover configuration', () => {
  it('has the documented defaults and needs only INTERNAL_TOKEN', () => {
    const cfg = loadDiscoverConfig({ argv: [], env: { INTERNAL_TOKEN: 'tok' }, envFile: false });
    expect(cfg).toEqual({
      environment: 'development',
      logLevel: 'info',
      internalToken: 'tok',
      port: 3001,
      host: '127.0.0.1',
      redisUrl: 'redis://127.0.0.1:6379',
      redisClusterNodes: [],
      keyPrefix: 'simplechat:',
      leaseMs: 10_000,
      sweepIntervalMs: 5_000,
      redisTimeoutMs: 2_000,
      internalTokenPrevious: undefined,
      shutdownTimeoutMs: 10_000,
    });
    expect(Object.isFrozen(cfg)).toBe(true);
  });

  it('takes flags over the environment over the .env file', () => {
    const file = envFile(['DISCOVER_PORT=3100', 'DISCOVER_HOST=10.0.0.1', 'LEASE_MS=3000', 'KEY_PREFIX=fromfile:', 'INTERNAL_TOKEN=file-token']);
    const cfg = loadDiscoverConfig({
      argv: ['--port', '3300', '--lease-ms', '1500'],
      env: { DISCOVER_PORT: '3200', LEASE_MS: '2000', KEY_PREFIX: 'fromenv:', INTERNAL_TOKEN_PREVIOUS: 'old-token' },
      envFile: file,
    });
    expect(cfg).toMatchObject({ port: 3300, leaseMs: 1500, keyPrefix: 'fromenv:', host: '10.0.0.1', internalToken: 'file-token', internalTokenPrevious: 'old-token' });
  });

  it('reports every problem in one ConfigError, without echoing secrets', () => {
    let caught: unknown;
    try {
      loadDiscoverConfig({ argv: ['--port', 'abc'], env: { LEASE_MS: '5', REDIS_URL: 'http://nope', SWEEP_INTERVAL_MS: '-1' }, envFile: false });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    const message = (caught as ConfigError).message;
    for (const name of ['DISCOVER_PORT', 'LEASE_MS', 'REDIS_URL', 'SWEEP_INTERVAL_MS', 'INTERNAL_TOKEN']) expect(message).toContain(name);
  });

  it('refuses a development token in production', () => {
    expect(() => loadDiscoverConfig({ argv: [], env: { ENVIRONMENT: 'production', INTERNAL_TOKEN: 'development-only-internal-token-do-not-use-in-production' }, envFile: false })).toThrow(/INTERNAL_TOKEN is the development value \(from \.env\); set a production secret of at least 32 bytes/);
    expect(() => loadDiscoverConfig({ argv: [], env: { ENVIRONMENT: 'production', INTERNAL_TOKEN: 'short' }, envFile: false })).toThrow(/INTERNAL_TOKEN is 5 bytes, too short for production; set a production secret/);
    const strong = 'x'.repeat(40);
    expect(loadDiscoverConfig({ argv: [], env: { ENVIRONMENT: 'production', INTERNAL_TOKEN: strong }, envFile: false }).environment).toBe('production');
  });

  it('reads REDIS_CLUSTER_NODES as host:port seeds, and names it in one line when one is not', async () => {
    const cfg = loadDiscoverConfig({ argv: [], env: { INTERNAL_TOKEN: 'tok', REDIS_CLUSTER_NODES: ' 10.0.0.5:7000, redis-2.internal:7001,[::1]:7002' }, envFile: false });
    expect(cfg.redisClusterNodes).toEqual([
      { host: '10.0.0.5', port: 7000 },
      { host: 'redis-2.internal', port: 7001 },
      { host: '::1', port: 7002 },
    ]);
    for (const bad of ['10.0.0.5', 'redis://10.0.0.5:7000', '10.0.0.5:0', 'host:70000', 'a b:1']) {
      expect(() => loadDiscoverConfig({ argv: [], env: { INTERNAL_TOKEN: 'tok', REDIS_CLUSTER_NODES: bad }, envFile: false })).toThrow(/^invalid configuration: REDIS_CLUSTER_NODES \(--redis-cluster-nodes\) = .* is invalid: .* is not host:port/);
    }
    await expect(checkClusterNodes([{ host: '127.0.0.1', port: 7000 }, { host: 'localhost', port: 7001 }])).resolves.toBeUndefined();
    await expect(checkClusterNodes([{ host: 'no-such-host.invalid', port: 7000 }])).rejects.toThrow(/^invalid configuration: REDIS_CLUSTER_NODES names hosts that do not resolve: no-such-host\.invalid .*; set it to host:port of reachable Redis Cluster nodes/);
  });

  it('rejects an unknown flag', () => {
    expect(() => loadDiscoverConfig({ argv: ['--no-such-flag', '1'], env: { INTERNAL_TOKEN: 'tok' }, envFile: false })).toThrow(ConfigError);
  });
});
