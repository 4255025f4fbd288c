/**
 * CPU and memory of processes from /proc (no package): CPU as % of one core
 * between two snapshots (utime + stime of /proc/<pid>/stat), RSS from VmRSS
 * of /proc/<pid>/status, sampled while a phase runs to report its peak.
 * Groups sum several processes (every Postgres backend, say).
 */
import { execSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

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

/** utime + stime in seconds, or undefined when the process is gone. */
export function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: fields start after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / ticksPerSecond();
  } catch {
    return undefined;
  }
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

export interface Tracked {
  name: string;
  /** pids now (called at every snapshot: groups change members) */
  pids(): number[];
}

export interface ProcUsage {
  /** % of one core over the window */
  cpu: number;
  /** peak RSS seen while sampling (MB) */
  rssMb: number;
}

export interface Window {
  stop(): Record<string, ProcUsage>;
}

/** Starts measuring the tracked processes; stop() returns their CPU and peak RSS over the window. */
export function measure(tracked: readonly Tracked[], sampleMs = 500): Window {
  const t0 = performance.now();
  const start = new Map<string, Map<number, number>>();
  const peak = new Map<string, number>();
  const cpuOf = (t: Tracked) => {
    const m = new Map<number, number>();
    for (const pid of t.pids()) {
      const s = cpuSeconds(pid);
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
  for (const t of tracked) start.set(t.name, cpuOf(t));
  sample();
  const timer = setInterval(sample, sampleMs);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      sample();
      const seconds = (performance.now() - t0) / 1000;
      const out: Record<string, ProcUsage> = {};
      for (const t of tracked) {
        const before = start.get(t.name) ?? new Map<number, number>();
        let used = 0;
        // A process that started inside the window counts from zero; one that ended is lost (small).
        for (const [pid, s] of cpuOf(t)) used += s - (before.get(pid) ?? 0);
        out[t.name] = { cpu: seconds > 0 ? (100 * used) / seconds : 0, rssMb: (peak.get(t.name) ?? 0) / 2 ** 20 };
      }
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
