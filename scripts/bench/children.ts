/**
 * Child processes of the benchmark: services, bare servers and load workers.
 * Every child watches its parent and stops itself (SIGTERM) when the benchmark
 * process is gone, so even a killed run leaves nothing behind; every stop is
 * bounded (SIGTERM, then SIGKILL after a deadline).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { ROOT } from '../lib/env';
import { openFileLimits } from './procs';

/** Preloaded into every child: when the parent dies, the child is re-parented and terminates itself. */
const PARENT_WATCH = resolve(__dirname, 'parent-watch.js');

export const TS_NODE_FLAGS = ['-r', 'ts-node/register/transpile-only'];

export interface Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly pid: number;
  exited: boolean;
  exitCode: number | null;
  exitSignal: NodeJS.Signals | null;
  /** last lines of stdout/stderr (services log pino JSON at warn and above) */
  readonly tail: string[];
  /** log lines at warn or above, and other stderr lines */
  warnings: number;
  exitedPromise: Promise<void>;
  stop(timeoutMs?: number): Promise<void>;
}

export interface SpawnOptions {
  args?: string[];
  env: NodeJS.ProcessEnv;
  nodeFlags?: string[];
  /** open-file limit the child needs; raised through `sh -c ulimit` when the soft limit is lower */
  nofile?: number;
  ipc?: boolean;
}

const TAIL_LINES = 40;

export function spawnNode(name: string, script: string, options: SpawnOptions): Child {
  const nodeArgs = ['-r', PARENT_WATCH, ...(options.nodeFlags ?? []), script, ...(options.args ?? [])];
  const stdio: ('ignore' | 'pipe' | 'ipc')[] = options.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'];
  const limits = openFileLimits();
  let proc: ChildProcess;
  if (options.nofile && limits.soft < options.nofile && limits.hard > limits.soft) {
    const n = Math.min(options.nofile, limits.hard);
    // exec keeps the pid (and the IPC descriptor): the pid we measure is node's.
    proc = spawn('sh', ['-c', `ulimit -n ${n} && exec "$0" "$@"`, process.execPath, ...nodeArgs], { cwd: ROOT, env: options.env, stdio });
  } else {
    proc = spawn(process.execPath, nodeArgs, { cwd: ROOT, env: options.env, stdio });
  }
  if (proc.pid === undefined) throw new Error(`could not start ${name}`);
  const tail: string[] = [];
  let exitResolve!: () => void;
  const child: Child = {
    name,
    proc,
    pid: proc.pid,
    exited: false,
    exitCode: null,
    exitSignal: null,
    tail,
    warnings: 0,
    exitedPromise: new Promise<void>((r) => (exitResolve = r)),
    async stop(timeoutMs = 15_000) {
      if (child.exited) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      await child.exitedPromise;
      clearTimeout(timer);
    },
  };
  const onLine = (line: string) => {
    if (!line.trim()) return;
    tail.push(line);
    if (tail.length > TAIL_LINES) tail.shift();
    child.warnings++;
  };
  if (proc.stdout) createInterface({ input: proc.stdout }).on('line', onLine);
  if (proc.stderr) createInterface({ input: proc.stderr }).on('line', onLine);
  proc.on('error', () => undefined);
  proc.on('exit', (code, signal) => {
    child.exited = true;
    child.exitCode = code;
    child.exitSignal = signal;
    exitResolve();
  });
  return child;
}

/** A minimal environment: nothing of the caller's configuration leaks into a child. */
export function baseEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const keep = ['PATH', 'HOME', 'LANG', 'TMPDIR', 'TZ'];
  const env: NodeJS.ProcessEnv = {};
  for (const k of keep) if (process.env[k] !== undefined) env[k] = process.env[k];
  return { ...env, ENV_FILE: '/nonexistent', FORCE_COLOR: '0', NO_COLOR: '1', ...extra };
}
