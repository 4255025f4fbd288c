/**
 * CPU and memory of processes from /proc (no package): CPU as % of one core
 * between two snapshots (utime + stime of /proc/<pid>/stat), RSS from VmRSS
 * of /proc/<pid>/status, sampled while a phase runs to report its peak.
 * Groups sum several processes (every Postgres backend, say).
 */
import { execSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

let clkTck: number | undefined;
function ticksPerSecond(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execSync('getconf CLK_TCK', { encoding: 'utf8', timeout: 2000 }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/**
 * utime + stime in seconds (plus cutime + cstime, the CPU of reaped children,
 * when `withChildren`), or undefined when the process is gone.
 */
export function cpuSeconds(pid: number, withChildren = false): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: fields start after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const own = Number(rest[11]) + Number(rest[12]);
    return (withChildren ? own + Number(rest[13]) + Number(rest[14]) : own) / ticksPerSecond();
  } catch {
    return undefined;
  }
}

/** Busy CPU seconds of the whole machine (all cores), from /proc/stat. */
export function machineBusySeconds(): number {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]?.trim().split(/\s+/).slice(1).map(Number) ?? [];
    // user nice system idle iowait irq softirq steal
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f;
    return (user + nice + system + irq + softirq + steal) / ticksPerSecond();
  } catch {
    return 0;
  }
}

/**
 * Times the process's threads went to sleep waiting for something (voluntary
 * context switches, summed over /proc/<pid>/task/*): each is a wake-up later,
 * the cost that dominates on a VM at low and middle rates. Unlike CPU time it
 * does not depend on how busy the rest of the machine is.
 */
export function voluntarySwitches(pid: number): number | undefined {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return undefined;
  }
  let n = 0;
  for (const tid of tasks) {
    try {
      const m = /voluntary_ctxt_switches:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
      if (m) n += Number(m[1]);
    } catch {
      // thread gone meanwhile
    }
  }
  return n;
}

/** Resident set size in bytes, or undefined when the process is gone. */
export function rssBytes(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Pids whose command name (/proc/<pid>/comm) is one of `names`. */
export function pidsByName(names: readonly string[]): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (names.includes(readFileSync(`/proc/${entry}/comm`, 'utf8').trim())) out.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** The pid of the process listening on a local TCP port (IPv4 or IPv6), from /proc/net and the fd tables. */
export function pidListeningOn(port: number): number | undefined {
  const inodes = new Set<string>();
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    try {
      for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
        const f = line.trim().split(/\s+/);
        // local_address is ADDR:PORT in hex; state 0A is LISTEN; inode is field 10
        if (f[1]?.endsWith(`:${hexPort}`) && f[3] === '0A' && f[9]) inodes.add(f[9]);
      }
    } catch {
      // no IPv6
    }
  }
  if (inodes.size === 0) return undefined;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${entry}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${entry}/fd/${fd}`));
        if (m && inodes.has(m[1] as string)) return Number(entry);
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}

/** The pid and its descendants (Postgres backends of a postmaster, helpers of a BEAM). */
export function withDescendants(root: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parentOf.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone
    }
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) for (const [pid, ppid] of parentOf) if (ppid === out[i]) out.push(pid);
  return out;
}

export interface Tracked {
  name: string;
  /** pids now (called at every snapshot: groups change members) */
  pids(): number[];
  /**
   * A group whose members are children of one of them (Postgres backends of
   * the postmaster): CPU is summed with cutime + cstime, so a member that exits
   * inside the window still counts (its time moves to the parent's cutime).
   */
  isGroup?: boolean;
}

export interface ProcUsage {
  /** % of one core over the window */
  cpu: number;
  /** CPU seconds used in the window */
  cpuSeconds: number;
  /** peak RSS seen while sampling (MB) */
  rssMb: number;
  /** voluntary context switches (sleeps, so wake-ups) in the window, of the pids present at both ends */
  wakes?: number;
}

export interface Window {
  stop(): Record<string, ProcUsage>;
}

/**
 * Starts measuring the tracked processes; stop() returns their CPU and peak RSS
 * over the window, and `other`: the CPU of the rest of the machine (a busy
 * neighbour shows up there).
 */
export function measure(tracked: readonly Tracked[], sampleMs = 500): Window {
  const t0 = performance.now();
  const machine0 = machineBusySeconds();
  const start = new Map<string, Map<number, number>>();
  const peak = new Map<string, number>();
  const cpuOf = (t: Tracked) => {
    const m = new Map<number, number>();
    for (const pid of t.pids()) {
      const s = cpuSeconds(pid, t.isGroup);
      if (s !== undefined) m.set(pid, s);
    }
    return m;
  };
  const sample = () => {
    for (const t of tracked) {
      let rss = 0;
      for (const pid of t.pids()) rss += rssBytes(pid) ?? 0;
      peak.set(t.name, Math.max(peak.get(t.name) ?? 0, rss));
    }
  };
  const wakesOf = (t: Tracked) => {
    const m = new Map<number, number>();
    for (const pid of t.pids()) {
      const w = voluntarySwitches(pid);
      if (w !== undefined) m.set(pid, w);
    }
    return m;
  };
  const wakes0 = new Map<string, Map<number, number>>();
  for (const t of tracked) {
    start.set(t.name, cpuOf(t));
    wakes0.set(t.name, wakesOf(t));
  }
  sample();
  const timer = setInterval(sample, sampleMs);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      sample();
      const seconds = (performance.now() - t0) / 1000;
      const machine = machineBusySeconds() - machine0;
      const out: Record<string, ProcUsage> = {};
      let ours = 0;
      for (const t of tracked) {
        const before = start.get(t.name) ?? new Map<number, number>();
        const after = cpuOf(t);
        let used = 0;
        if (t.isGroup) {
          for (const s of after.values()) used += s;
          for (const s of before.values()) used -= s;
        } else {
          // A process that started inside the window counts from zero.
          for (const [pid, s] of after) used += s - (before.get(pid) ?? 0);
        }
        used = Math.max(0, used);
        ours += used;
        let wakes = 0;
        const w0 = wakes0.get(t.name) ?? new Map<number, number>();
        for (const [pid, w] of wakesOf(t)) if (w0.has(pid)) wakes += w - (w0.get(pid) as number);
        out[t.name] = { cpu: seconds > 0 ? (100 * used) / seconds : 0, cpuSeconds: used, rssMb: (peak.get(t.name) ?? 0) / 2 ** 20, wakes };
      }
      const other = Math.max(0, machine - ours);
      out.other = { cpu: seconds > 0 ? (100 * other) / seconds : 0, cpuSeconds: other, rssMb: 0 };
      return out;
    },
  };
}

/** Soft and hard limit of open files of this process. */
export function openFileLimits(): { soft: number; hard: number } {
  try {
    const m = /Max open files\s+(\S+)\s+(\S+)/.exec(readFileSync('/proc/self/limits', 'utf8'));
    const num = (s: string | undefined) => (s === 'unlimited' || s === undefined ? Infinity : Number(s));
    return { soft: num(m?.[1]), hard: num(m?.[2]) };
  } catch {
    return { soft: 1024, hard: 1024 };
  }
}
