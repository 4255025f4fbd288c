/** The one table of a run, as Markdown (pastes into docs/PERFORMANCE.md as is). */
import type { ProcUsage } from './procs';

export interface TableRow {
  part: string;
  test: string;
  offered?: number;
  acked?: number;
  /** delivered/s, or the rate of a raw loop (unit in the note) */
  rate?: number;
  lost?: number;
  dup?: number;
  ack?: [number | undefined, number | undefined];
  delivery?: [number | undefined, number | undefined, number | undefined];
  cpu?: Record<string, ProcUsage>;
  note?: string;
}

const COLUMNS = ['part', 'test', 'offered/s', 'acked/s', 'delivered/s (rate)', 'lost', 'dup', 'ack ms p50/p99', 'delivery ms p50/p99/max', 'CPU % of one core', 'RSS MB', 'note'];

/** short names, in display order; processes not listed are left out of the CPU cell */
const SHORT: [string, string][] = [
  ...Array.from({ length: 9 }, (_, i): [string, string] => [`ws-${i + 1}`, `ws${i + 1}`]),
  ['discover', 'disc'],
  ['persist', 'pers'],
  ['persist-1', 'pers1'],
  ['persist-2', 'pers2'],
  ...Array.from({ length: 8 }, (_, i): [string, string] => [`sio-${i + 1}`, `sio${i + 1}`]),
  ['relay', 'relay'],
  ['http', 'http'],
  ['load-1', 'load1'],
  ['load-2', 'load2'],
  ['bench', 'bench'],
  ['redis', 'redis'],
  ['rabbitmq', 'rmq'],
  ['postgres', 'pg'],
  ['other', 'other'],
];
const RSS_OF = new Set([...SHORT.filter(([k]) => k.startsWith('ws-') || k.startsWith('sio-')).map(([k]) => k), 'persist', 'persist-1', 'persist-2', 'relay']);

export function num(n: number | undefined, digits = 0): string {
  if (n === undefined || !Number.isFinite(n)) return '';
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

/** latency: 2 significant decimals below 10 ms */
export function ms(n: number | undefined): string {
  if (n === undefined) return '–';
  return n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : Math.round(n).toLocaleString('en-US');
}

function cpuCell(cpu: Record<string, ProcUsage> | undefined): string {
  if (!cpu) return '';
  return SHORT.filter(([k]) => cpu[k] && cpu[k].cpu >= 0.5)
    .map(([k, s]) => `${s} ${Math.round((cpu[k] as ProcUsage).cpu)}`)
    .join(' ');
}

function rssCell(cpu: Record<string, ProcUsage> | undefined): string {
  if (!cpu) return '';
  return SHORT.filter(([k]) => RSS_OF.has(k) && cpu[k] && (cpu[k] as ProcUsage).rssMb > 0)
    .map(([k, s]) => `${s} ${Math.round((cpu[k] as ProcUsage).rssMb)}`)
    .join(' ');
}

export function renderTable(title: string, rows: readonly TableRow[]): string {
  const cells = rows.map((r) => [
    r.part,
    r.test,
    num(r.offered),
    num(r.acked),
    num(r.rate),
    r.lost === undefined ? '' : num(r.lost),
    r.dup === undefined ? '' : num(r.dup),
    r.ack ? `${ms(r.ack[0])} / ${ms(r.ack[1])}` : '',
    r.delivery ? `${ms(r.delivery[0])} / ${ms(r.delivery[1])} / ${ms(r.delivery[2])}` : '',
    cpuCell(r.cpu),
    rssCell(r.cpu),
    r.note ?? '',
  ]);
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  const lines = [title, '', `| ${COLUMNS.join(' | ')} |`, `|${COLUMNS.map((_, i) => (i >= 2 && i <= 6 ? '---:' : '---')).join('|')}|`];
  for (const c of cells) lines.push(`| ${c.map(esc).join(' | ')} |`);
  return lines.join('\n');
}

/** What every measured load step has, whichever the test (one-to-one messages or rooms). */
export interface LoadOutcome {
  offered: number;
  ackedPerSec: number;
  deliveredPerSec: number;
  lost: number;
  duplicated: number;
  ackP50?: number | undefined;
  ackP99?: number | undefined;
  deliveryP50?: number | undefined;
  deliveryP99?: number | undefined;
  deliveryMax?: number | undefined;
  usage: Record<string, ProcUsage>;
  noAnswer: number;
  errors: Record<string, number>;
  closed: Record<string, number>;
  hints: number;
  crashed: string[];
  warnings: Record<string, number>;
  loadLoopDelayP99Ms: number;
  kind: string;
  deliverySettledP99?: number | undefined;
  slowBySecond: number[];
}

export const errorCount = (r: Pick<LoadOutcome, 'errors'>) => Object.values(r.errors).reduce((a, b) => a + b, 0);

/** The notes every load step gets about what went wrong or slow (empty when nothing did). */
export function outcomeNotes(r: LoadOutcome): string[] {
  const bits: string[] = [];
  if (r.noAnswer) bits.push(`${num(r.noAnswer)} unanswered`);
  if (errorCount(r)) bits.push(`errors ${Object.entries(r.errors).map(([k, v]) => `${k} ${num(v)}`).join(', ')}`);
  if (Object.keys(r.closed).length) bits.push(`closed ${Object.entries(r.closed).map(([k, v]) => `${k}×${v}`).join(', ')}`);
  if (r.hints) bits.push(`${r.hints} sync.hint`);
  if (r.crashed.length) bits.push(`CRASHED: ${r.crashed.join(', ')}`);
  const warn = Object.entries(r.warnings);
  if (warn.length) bits.push(`warn logs ${warn.map(([k, v]) => `${k} ${v}`).join(', ')}`);
  if (r.loadLoopDelayP99Ms > 20) bits.push(`load loop lag p99 ${r.loadLoopDelayP99Ms.toFixed(0)} ms`);
  if (r.kind === 'step' && r.deliverySettledP99 !== undefined) bits.push(`delivery p99 after the first second ${ms(r.deliverySettledP99)} ms`);
  if (r.slowBySecond.some((n) => n > 0)) bits.push(`deliveries over 50 ms by second: ${r.slowBySecond.map((n) => num(n)).join(' ')}`);
  return bits;
}

/** A table row of a load step. */
export function outcomeRow(part: string, test: string, r: LoadOutcome, note: string): TableRow {
  return {
    part,
    test,
    offered: r.offered,
    acked: r.ackedPerSec,
    rate: r.deliveredPerSec,
    lost: r.lost,
    dup: r.duplicated,
    ack: [r.ackP50, r.ackP99],
    delivery: [r.deliveryP50, r.deliveryP99, r.deliveryMax],
    cpu: r.usage,
    note,
  };
}
