/**
 * The supervisor of `npm start` with real child processes and a clock the test moves: the
 * restart schedule of a process that keeps exiting, its reset after a long run, and stop()
 * (order, a cancelled restart, the deadline).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createSupervisor, restartDelayMs, RESTART_BACKOFF, type Clock, type Supervisor } from '../scripts/lib/supervisor';
import { eventually } from './helpers';

/** Exits at once with code 3: a process that crashes while starting. */
const CRASHES = 'process.exit(3)';
/** Says "ready" and runs until a signal ends it. */
const SERVES = 'console.log("ready"); setInterval(() => {}, 1000)';
/** Takes 300 ms to exit after SIGTERM (a drain). */
const DRAINS = 'process.on("SIGTERM", () => setTimeout(() => process.exit(0), 300)); console.log("ready"); setInterval(() => {}, 1000)';
/** Ignores SIGTERM. */
const STUCK = 'process.on("SIGTERM", () => {}); console.log("ready"); setInterval(() => {}, 1000)';

function node(source: string): ChildProcess {
  const child = spawn(process.execPath, ['-e', source], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return child;
}

/** Resolves true once the child printed "ready", false when it exited first. */
function ready(child: ChildProcess): Promise<boolean> {
  return new Promise((resolve) => {
    child.stdout?.on('data', (d: Buffer) => d.toString().includes('ready') && resolve(true));
    child.once('close', () => resolve(false));
  });
}

/** A clock whose time moves only by advance(); due timers run then. */
function testClock(): Clock & { advance(ms: number): void; pending(): number[] } {
  let now = 0;
  let timers: { at: number; fn: () => void }[] = [];
  return {
    now: () => now,
    setTimeout(fn, ms) {
      const timer = { at: now + ms, fn };
      timers.push(timer);
      return timer;
    },
    clearTimeout(timer) {
      timers = timers.filter((t) => t !== timer);
    },
    advance(ms) {
      now += ms;
      const due = timers.filter((t) => t.at <= now);
      timers = timers.filter((t) => t.at > now);
      for (const t of due) t.fn();
    },
    pending: () => timers.map((t) => t.at - now),
  };
}

const children: ChildProcess[] = [];
let supervisor: Supervisor | undefined;
afterEach(() => {
  supervisor?.killAll();
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.length = 0;
});

describe('restart schedule', () => {
  it('2 s, then doubling while the process keeps exiting, at most 30 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => restartDelayMs(n, RESTART_BACKOFF))).toEqual([2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
  });
});

describe('supervisor', () => {
  it('restarts a process that keeps exiting after 2, 4, 8, 16, 30, 30 s, and after 2 s again once a run lasted 60 s', async () => {
    const clock = testClock();
    const lines: string[] = [];
    let source = CRASHES;
    let spawns = 0;
    supervisor = createSupervisor({ say: (l) => lines.push(l), clock });
    const proc = supervisor.run({
      name: 'ws-2',
      spawn: () => (spawns++, node(source)),
      waitUp: ready,
    });
    for (const [i, delayMs] of [2_000, 4_000, 8_000, 16_000, 30_000, 30_000].entries()) {
      await eventually(() => expect(lines).toHaveLength(i + 1));
      expect(lines[i]).toBe(`ws-2 exited (code 3) before it was up; restarting it in ${delayMs / 1000} s (restart ${i + 1})`);
      expect(clock.pending()).toEqual([delayMs]);
      expect(spawns).toBe(i + 1);
      if (i === 5) source = SERVES;
      clock.advance(delayMs);
      expect(spawns).toBe(i + 2);
    }
    await eventually(() => expect(lines.at(-1)).toBe(`ws-2 is up again (pid ${proc.child.pid})`));
    clock.advance(60_000);
    proc.child.kill('SIGKILL');
    await eventually(() => expect(lines.at(-1)).toBe('ws-2 exited (SIGKILL); restarting it in 2 s (restart 7)'));
    expect(clock.pending()).toEqual([2_000]);
  });

  it('stop cancels a pending restart', async () => {
    const clock = testClock();
    const lines: string[] = [];
    let spawns = 0;
    supervisor = createSupervisor({ say: (l) => lines.push(l), clock });
    const proc = supervisor.run({ name: 'persist', spawn: () => (spawns++, node(CRASHES)), waitUp: ready });
    await eventually(() => expect(lines).toEqual(['persist exited (code 3) before it was up; restarting it in 2 s (restart 1)']));
    await supervisor.stop([[proc]], 15_000);
    expect(clock.pending()).toEqual([]);
    clock.advance(60_000);
    expect(spawns).toBe(1);
  });

  it('stops group after group, each once the one before has exited, and restarts none of them', async () => {
    const lines: string[] = [];
    supervisor = createSupervisor({ say: (l) => lines.push(l) });
    const closed: string[] = [];
    const up: Promise<boolean>[] = [];
    const spec = (name: string, source: string) => ({
      name,
      spawn: () => {
        const child = node(source);
        child.once('close', () => closed.push(name));
        return child;
      },
      waitUp: (child: ChildProcess) => {
        up.push(ready(child));
        return up[up.length - 1] as Promise<boolean>;
      },
    });
    const gateway = supervisor.run(spec('ws-1', DRAINS));
    const discover = supervisor.run(spec('discover', SERVES));
    expect(await Promise.all(up)).toEqual([true, true]);
    await supervisor.stop([[gateway], [discover]], 15_000);
    // the gateway takes 300 ms to drain; stopped together, discover would have exited first
    expect(closed).toEqual(['ws-1', 'discover']);
    expect(gateway.child.exitCode).toBe(0);
    expect(discover.child.signalCode).toBe('SIGTERM');
    expect(lines).toEqual([]);
  });

  it('SIGKILLs what still runs at the deadline', async () => {
    const clock = testClock();
    supervisor = createSupervisor({ say: () => undefined, clock });
    let up: Promise<boolean> = Promise.resolve(false);
    const proc = supervisor.run({ name: 'ws-1', spawn: () => node(STUCK), waitUp: (child) => (up = ready(child)) });
    expect(await up).toBe(true);
    const stopped = supervisor.stop([[proc]], 15_000);
    expect(clock.pending()).toEqual([15_000]);
    clock.advance(15_000);
    await stopped;
    expect(proc.child.signalCode).toBe('SIGKILL');
  });
});
