/**
 * Child processes of the fault suite: each runs in its own process group
 * (detached), so a signal reaches the whole tree (runuser -> sh -> beam.smp).
 * Every child is registered here; killAll() (afterAll, and the 'exit' and
 * signal handlers installed once) kills what is still running, and every
 * temporary directory is removed, even when a scenario failed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync, chmodSync, type WriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Proc {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** resolves with the exit code (or signal) once the process is gone */
  readonly exited: Promise<number | string>;
  isRunning(): boolean;
  /** signal to the process itself (its own handlers decide about its children) */
  signal(sig: NodeJS.Signals): void;
  /** SIGKILL to the whole process group */
  killGroup(): void;
  /** the last lines of stdout+stderr, for failure messages */
  tail(lines?: number): string;
}

const live = new Set<Proc>();
const dirs = new Set<string>();
let isHooked = false;

function hookExit(): void {
  if (isHooked) return;
  isHooked = true;
  process.on('exit', () => cleanupSync());
  // The test runner went away (a vitest worker whose parent died): nobody will call afterAll.
  process.once('disconnect', () => cleanupSync());
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanupSync();
      process.kill(process.pid, sig);
    });
  }
}

/** Kills every child still running (SIGKILL to its group; SIGCONT first for stopped ones) and removes the temp dirs. */
export function cleanupSync(): void {
  for (const p of live) {
    try {
      process.kill(-p.pid, 'SIGCONT');
      process.kill(-p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
}

export function tempDir(tag: string): string {
  hookExit();
  const d = mkdtempSync(join(tmpdir(), `simplechat-faults-${tag}-`));
  // service users (postgres, rabbitmq) must traverse it
  chmodSync(d, 0o755);
  if (!process.env.KEEP_FAULTS_DIR) dirs.add(d);
  return d;
}

export function removeDir(d: string): void {
  rmSync(d, { recursive: true, force: true });
  dirs.delete(d);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

const MAX_TAIL = 400;

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  logFile?: string;
  /** run as this user (the suite runs as root; Postgres refuses root) */
  uid?: number;
  gid?: number;
}

export function startProc(name: string, cmd: string, args: string[], options: StartOptions = {}): Proc {
  hookExit();
  const child = spawn(cmd, args, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(options.uid !== undefined ? { uid: options.uid } : {}),
    ...(options.gid !== undefined ? { gid: options.gid } : {}),
  });
  const lines: string[] = [];
  let log: WriteStream | undefined;
  if (options.logFile) log = createWriteStream(options.logFile, { flags: 'a' });
  let partial = '';
  const onData = (chunk: Buffer) => {
    log?.write(chunk);
    const text = partial + chunk.toString();
    const parts = text.split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      lines.push(line);
      if (lines.length > MAX_TAIL) lines.shift();
    }
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  let running = true;
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, sig) => {
      running = false;
      live.delete(proc);
      log?.end();
      resolve(code ?? sig ?? 'unknown');
    });
    child.once('error', (err) => {
      running = false;
      live.delete(proc);
      lines.push(`spawn failed: ${err.message}`);
      resolve('spawn-error');
    });
  });
  const proc: Proc = {
    name,
    child,
    pid: child.pid ?? -1,
    exited,
    isRunning: () => running,
    signal(sig) {
      if (!running) return;
      try {
        process.kill(proc.pid, sig);
      } catch {
        // gone meanwhile
      }
    },
    killGroup() {
      try {
        process.kill(-proc.pid, 'SIGCONT');
        process.kill(-proc.pid, 'SIGKILL');
      } catch {
        // nothing left
      }
    },
    tail: (n = 40) => lines.slice(-n).join('\n'),
  };
  live.add(proc);
  return proc;
}

/** Sends sig to the process and waits for its exit (SIGKILL after graceMs), then kills what is left of its group. */
export async function stopProc(p: Proc, sig: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<number | string> {
  if (!p.isRunning()) return p.exited;
  p.signal('SIGCONT');
  p.signal(sig);
  const timer = setTimeout(() => p.signal('SIGKILL'), graceMs);
  const code = await p.exited;
  clearTimeout(timer);
  p.killGroup();
  return code;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `probe` until it resolves truthy, or throws after timeoutMs. */
export async function waitUntil(what: string, probe: () => Promise<boolean> | boolean, timeoutMs: number, intervalMs = 100): Promise<number> {
  const started = Date.now();
  let lastErr: unknown;
  for (;;) {
    try {
      if (await probe()) return Date.now() - started;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms${lastErr ? ` (${(lastErr as Error).message})` : ''}`);
    await sleep(intervalMs);
  }
}
