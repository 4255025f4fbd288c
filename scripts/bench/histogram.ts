/**
 * Latency histogram with log-spaced buckets (2% wide, from 10 µs): small
 * enough to travel over IPC as counts and merge by addition, precise enough
 * for p50/p99. The exact maximum is kept beside the buckets.
 */

const MIN_MS = 0.01;
const RATIO = 1.02;
const LOG_RATIO = Math.log(RATIO);
const BUCKETS = 1000; // 0.01 ms * 1.02^1000 is far past any bounded wait

export interface HistogramData {
  counts: Record<number, number>;
  n: number;
  max: number;
}

export class Histogram {
  private readonly counts = new Uint32Array(BUCKETS);
  n = 0;
  max = 0;

  record(ms: number): void {
    const v = ms > MIN_MS ? ms : MIN_MS;
    const i = Math.min(BUCKETS - 1, Math.floor(Math.log(v / MIN_MS) / LOG_RATIO));
    this.counts[i] = (this.counts[i] as number) + 1;
    this.n++;
    if (ms > this.max) this.max = ms;
  }

  toJSON(): HistogramData {
    const counts: Record<number, number> = {};
    this.counts.forEach((c, i) => {
      if (c) counts[i] = c;
    });
    return { counts, n: this.n, max: this.max };
  }

  static merge(parts: readonly HistogramData[]): HistogramData {
    const counts: Record<number, number> = {};
    let n = 0;
    let max = 0;
    for (const p of parts) {
      for (const [k, c] of Object.entries(p.counts)) counts[Number(k)] = (counts[Number(k)] ?? 0) + c;
      n += p.n;
      max = Math.max(max, p.max);
    }
    return { counts, n, max };
  }
}

/** The q-quantile (0..1) in ms: the upper edge of the bucket holding it, capped at the exact max. */
export function quantile(h: HistogramData, q: number): number | undefined {
  if (h.n === 0) return undefined;
  const rank = Math.max(1, Math.ceil(q * h.n));
  let seen = 0;
  const keys = Object.keys(h.counts)
    .map(Number)
    .sort((a, b) => a - b);
  for (const k of keys) {
    seen += h.counts[k] ?? 0;
    if (seen >= rank) return Math.min(h.max, MIN_MS * RATIO ** (k + 1));
  }
  return h.max;
}
