/**
 * Top self-time functions of a V8 CPU profile (node --cpu-prof), so a
 * bottleneck can be reported with numbers. Used by `npm run bench -- --cpu-prof`
 * and on its own:
 *
 *   npx ts-node --transpile-only scripts/bench/profile.ts file.cpuprofile [top]
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { ROOT } from '../lib/env';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface HotFunction {
  fn: string;
  where: string;
  selfMs: number;
  selfPct: number;
}

export interface ProfileSummary {
  file: string;
  totalMs: number;
  /** share of samples not idle (program + GC + functions) */
  busyPct: number;
  gcPct: number;
  top: HotFunction[];
  /** self time grouped by package or project folder */
  byArea: { area: string; selfPct: number }[];
}

function where(url: string, line: number): string {
  if (!url) return '(native)';
  const path = url.replace(/^file:\/\//, '');
  const rel = path.startsWith(ROOT) ? relative(ROOT, path) : path;
  return `${rel}:${line + 1}`;
}

function area(url: string): string {
  const path = url.replace(/^file:\/\//, '');
  const nm = path.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = path.slice(nm + 'node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1]}` : (rest[0] ?? '?');
  }
  if (path.startsWith('node:')) return 'node core';
  if (path.startsWith(ROOT)) return relative(ROOT, path).split('/')[0] ?? '?';
  return path ? 'other' : '(native/V8)';
}

export function summariseProfile(file: string, top = 15): ProfileSummary {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  prof.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)));
  const totalUs = prof.timeDeltas.reduce((a, b) => a + b, 0) || 1;
  const fns = new Map<string, HotFunction & { us: number }>();
  const areas = new Map<string, number>();
  let idle = 0;
  let gc = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === '(idle)') {
      idle += us;
      continue;
    }
    if (functionName === '(garbage collector)') gc += us;
    const key = `${functionName}|${url}|${lineNumber}`;
    const f = fns.get(key) ?? { fn: functionName || '(anonymous)', where: where(url, lineNumber), selfMs: 0, selfPct: 0, us: 0 };
    f.us += us;
    fns.set(key, f);
    const a = functionName.startsWith('(') ? functionName : area(url);
    areas.set(a, (areas.get(a) ?? 0) + us);
  }
  const pct = (us: number) => Math.round((1000 * us) / totalUs) / 10;
  return {
    file,
    totalMs: Math.round(totalUs / 1000),
    busyPct: pct(totalUs - idle),
    gcPct: pct(gc),
    top: [...fns.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, top)
      .map((f) => ({ fn: f.fn, where: f.where, selfMs: Math.round(f.us / 1000), selfPct: pct(f.us) })),
    byArea: [...areas.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 12)
      .map(([a, us]) => ({ area: a, selfPct: pct(us) })),
  };
}

export function formatProfile(s: ProfileSummary): string {
  const lines = [`${s.file}: ${s.totalMs} ms sampled, busy ${s.busyPct}%, GC ${s.gcPct}%`];
  lines.push(`  by area: ${s.byArea.map((a) => `${a.area} ${a.selfPct}%`).join(', ')}`);
  for (const f of s.top) lines.push(`  ${String(f.selfPct).padStart(5)}%  ${String(f.selfMs).padStart(7)} ms  ${f.fn}  ${f.where}`);
  return lines.join('\n');
}

if (require.main === module) {
  const [file, n] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: ts-node --transpile-only scripts/bench/profile.ts <file.cpuprofile> [top]\n');
    process.exit(2);
  }
  process.stdout.write(`${formatProfile(summariseProfile(file, Number(n ?? 25)))}\n`);
}
