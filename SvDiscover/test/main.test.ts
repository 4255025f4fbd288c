/** The process edge: src/main.ts run as a real process (ts-node, shared from its build). */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../../test/helpers';

const REPO = resolve(__dirname, '..', '..');
const MAIN = resolve(__dirname, '..', 'src', 'main.ts');

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

const running: ChildProcess[] = [];
afterEach(() => {
  for (const child of running.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

function runMain(args: string[], env: Record<string, string>): Run {
  const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', MAIN, ...args], {
    cwd: REPO,
    env: { ...process.env, TS_NODE_PROJECT: resolve(__dirname, '..', 'tsconfig.json'), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.push(child);
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
  return { child, stdout: () => out, stderr: () => err, exited };
}

describe('main', () => {
  it('a wrong setting stops startup with exit 1 and a message naming it, without a stack trace', async () => {
    const run = runMain(['--port', 'not-a-port'], { INTERNAL_TOKEN: 'tok', LEASE_MS: '5' });
    expect(await run.exited).toBe(1);
    expect(run.stderr()).toMatch(/^SvDiscover: invalid configuration:/);
    expect(run.stderr()).toContain('DISCOVER_PORT (--port)');
    expect(run.stderr()).toContain('LEASE_MS (--lease-ms)');
    expect(run.stderr()).not.toMatch(/\n\s+at /);
  });

  it('a REDIS_CLUSTER_NODES seed that is not host:port, or whose host does not resolve, stops startup with one line naming the setting', async () => {
    for (const [nodes, says] of [
      ['127.0.0.1:7000,redis://x:7001', /^SvDiscover: invalid configuration: REDIS_CLUSTER_NODES \(--redis-cluster-nodes\) = .* is invalid: "redis:\/\/x:7001" is not host:port .*\n$/],
      ['127.0.0.1:7000,no-such-host.invalid:7001', /^SvDiscover: invalid configuration: REDIS_CLUSTER_NODES names hosts that do not resolve: no-such-host\.invalid .*; set it to host:port of reachable Redis Cluster nodes.*\n$/],
    ] as const) {
      const run = runMain(['--port', '0'], { INTERNAL_TOKEN: 'tok', REDIS_CLUSTER_NODES: nodes });
      expect(await run.exited).toBe(1);
      expect(run.stderr()).toMatch(says);
    }
  });

  it('starts with Redis unreachable, logs it once, answers 503 on /health, and exits 0 on SIGTERM', async () => {
    const run = runMain(['--port', '0'], { REDIS_URL: 'redis://127.0.0.1:1', INTERNAL_TOKEN: 'tok', LOG_LEVEL: 'info' });
    const port = await eventually(() => {
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(run.stdout());
      if (!m?.[1]) throw new Error(`not listening yet; stdout: ${run.stdout()} stderr: ${run.stderr()}`);
      return Number(m[1]);
    }, { timeoutMs: 20_000 });
    const health = await fetch(`http://127.0.0.1:${port}/health`);
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ dependencies: { redis: 'down' } });
    const internal = await fetch(`http://127.0.0.1:${port}/internal/users/u1`, { headers: { authorization: 'Bearer tok' } });
    expect(internal.status).toBe(503);
    await eventually(() => expect(run.stdout()).toContain('redis at redis://127.0.0.1:1 is not reachable'));

    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
    const lines = run.stdout().trim().split('\n').map((l) => JSON.parse(l) as { level: string; msg: string });
    expect(lines.filter((l) => l.msg.includes('is not reachable'))).toHaveLength(1);
    expect(lines.some((l) => l.msg === 'stopped')).toBe(true);
    expect(lines.filter((l) => l.level === 'error')).toEqual([]);
    expect(run.stderr()).toBe('');
  });
});
