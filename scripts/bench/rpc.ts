/**
 * Request/answer over the IPC channel of a forked child, every call bounded.
 * The coordinator side is `createRpcClient`, the child side `serveRpc`.
 */
import type { Child } from './children';

interface Request {
  rpc: number;
  cmd: string;
  args: unknown;
}

interface Answer {
  rpc: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}

export interface RpcClient {
  call<T>(cmd: string, args: unknown, timeoutMs: number): Promise<T>;
}

export function createRpcClient(child: Child): RpcClient {
  let seq = 0;
  const waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  child.proc.on('message', (raw: unknown) => {
    const a = raw as Answer;
    const w = waiting.get(a.rpc);
    if (!w) return;
    waiting.delete(a.rpc);
    if (a.ok) w.resolve(a.result);
    else w.reject(new Error(`${child.name}: ${a.error ?? 'failed'}`));
  });
  void child.exitedPromise.then(() => {
    for (const w of waiting.values()) w.reject(new Error(`${child.name} exited (${child.exitSignal ?? `code ${child.exitCode}`}): ${child.tail.slice(-5).join(' | ')}`));
    waiting.clear();
  });
  return {
    call<T>(cmd: string, args: unknown, timeoutMs: number): Promise<T> {
      if (child.exited) return Promise.reject(new Error(`${child.name} is not running`));
      const rpc = ++seq;
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(rpc);
          reject(new Error(`${child.name}: no answer to ${cmd} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiting.set(rpc, {
          resolve: (v) => {
            clearTimeout(timer);
            resolve(v as T);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        });
        child.proc.send({ rpc, cmd, args } satisfies Request);
      });
    },
  };
}

export function serveRpc(handlers: Record<string, (args: never) => Promise<unknown>>): void {
  process.on('message', (raw: unknown) => {
    const req = raw as Request;
    const handler = handlers[req.cmd];
    const reply = (a: Answer) => {
      if (process.connected) process.send?.(a);
    };
    if (!handler) return reply({ rpc: req.rpc, ok: false, error: `unknown command ${req.cmd}` });
    handler(req.args as never).then(
      (result) => reply({ rpc: req.rpc, ok: true, result }),
      (err: unknown) => reply({ rpc: req.rpc, ok: false, error: err instanceof Error ? err.message : String(err) }),
    );
  });
  // The coordinator is gone or stops us: nothing more to do. A plain exit (not death by
  // signal) also lets --cpu-prof write the worker's profile.
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
}
