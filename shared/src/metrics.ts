/**
 * Prometheus metrics: one Registry per service instance (never prom-client's
 * global one), so that a test process holding a whole cluster keeps each
 * service's series apart. Every series is named simplechat_* and carries the
 * service (and instance) as labels. Durations are observed in seconds,
 * everywhere.
 */
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics, type Metric } from 'prom-client';

export type { Counter, Gauge, Histogram, Registry };

/**
 * Hot-path primitives. prom-client's labelled counters hash and validate their
 * labels on every increment, and a histogram observation costs about as much
 * (measured here: ~20 and ~15 times an unlabelled increment); per message
 * that adds up. These keep plain numbers, so an increment is one addition and
 * an observation a short bucket scan, and hand the values to prom-client only
 * when /metrics is scraped.
 */
export class FastCounter {
  value = 0;
  inc(n = 1): void {
    this.value += n;
  }
}

export class FastHistogram {
  /** per bucket, not cumulative; the last one is +Inf */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
  }
  observe(v: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > (b[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += v;
    this.count++;
  }
}

export const METRIC_PREFIX = 'simplechat_';

/** Request/confirm latencies: 0.5 ms to 10 s. */
export const LATENCY_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;
/** Items per batch (frames per forward, messages per insert). */
export const BATCH_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] as const;
/** End-to-end lag (accepted -> stored): 5 ms to 5 min. */
export const LAG_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300] as const;

export interface MetricsOptions {
  /** value of the `service` label: SvWebsocket, SvDiscover, SvPersist */
  service: string;
  /** value of the `instance_id` label (`instance` is Prometheus's own target label) */
  instanceId?: string;
  /**
   * process_* and nodejs_* series (CPU, memory, event-loop lag, GC). They
   * describe the whole process, and each collector keeps a GC observer and an
   * event-loop monitor for the life of the process, so main.ts turns them on
   * and in-process test builds leave them off.
   */
  processMetrics?: boolean;
}

type Collect<T> = (this: T) => void | Promise<void>;

export interface Metrics {
  readonly registry: Registry;
  /** the Content-Type of render()'s text */
  readonly contentType: string;
  /** name without the simplechat_ prefix, ending in _total */
  counter<L extends string = never>(name: string, help: string, labelNames?: readonly L[], collect?: Collect<Counter<L>>): Counter<L>;
  gauge<L extends string = never>(name: string, help: string, labelNames?: readonly L[], collect?: Collect<Gauge<L>>): Gauge<L>;
  histogram<L extends string = never>(name: string, help: string, buckets: readonly number[], labelNames?: readonly L[]): Histogram<L>;
  /** a counter for the hot path (see FastCounter) */
  fastCounter(name: string, help: string): FastCounter;
  /** one FastCounter per known value of one label; each starts at 0 */
  fastCounters<V extends string>(name: string, help: string, label: string, values: readonly V[]): Record<V, FastCounter>;
  /** a histogram for the hot path (see FastHistogram) */
  fastHistogram(name: string, help: string, buckets: readonly number[]): FastHistogram;
  /** simplechat_internal_auth_refused_total: internal requests without a valid token */
  readonly internalAuthRefused: Counter;
  /**
   * simplechat_dependency_up{dependency}: 1 while the dependency answers, read
   * at scrape time from the service's own view (no extra round trip unless
   * the function makes one).
   */
  dependencies(read: () => Record<string, boolean> | Promise<Record<string, boolean>>): void;
  /** the Prometheus text exposition of every series */
  render(): Promise<string>;
}

export function createMetrics(options: MetricsOptions): Metrics {
  const registry = new Registry();
  registry.setDefaultLabels(options.instanceId ? { service: options.service, instance_id: options.instanceId } : { service: options.service });
  if (options.processMetrics) collectDefaultMetrics({ register: registry });

  const counter = <L extends string = never>(name: string, help: string, labelNames: readonly L[] = [], collect?: Collect<Counter<L>>): Counter<L> =>
    new Counter<L>({ name: METRIC_PREFIX + name, help, labelNames, registers: [registry], ...(collect ? { collect } : {}) });
  const gauge = <L extends string = never>(name: string, help: string, labelNames: readonly L[] = [], collect?: Collect<Gauge<L>>): Gauge<L> =>
    new Gauge<L>({ name: METRIC_PREFIX + name, help, labelNames, registers: [registry], ...(collect ? { collect } : {}) });
  const histogram = <L extends string = never>(name: string, help: string, buckets: readonly number[], labelNames: readonly L[] = []): Histogram<L> =>
    new Histogram<L>({ name: METRIC_PREFIX + name, help, buckets: [...buckets], labelNames, registers: [registry] });

  const readers: (() => Record<string, boolean> | Promise<Record<string, boolean>>)[] = [];
  gauge('dependency_up', 'Whether a dependency of this service answers (1) or not (0), as this service sees it.', ['dependency'], async function () {
    this.reset();
    for (const read of readers) {
      const states = await read();
      for (const [name, up] of Object.entries(states)) this.set({ dependency: name }, up ? 1 : 0);
    }
  });

  function fastCounters<V extends string>(name: string, help: string, label: string, values: readonly V[]): Record<V, FastCounter> {
    const out = Object.fromEntries(values.map((v) => [v, new FastCounter()])) as Record<V, FastCounter>;
    counter(name, help, [label], function () {
      this.reset();
      for (const v of values) this.inc({ [label]: v }, out[v].value);
    });
    return out;
  }

  function fastHistogram(name: string, help: string, buckets: readonly number[]): FastHistogram {
    const h = new FastHistogram(buckets);
    const fullName = METRIC_PREFIX + name;
    // A metric object in prom-client's get() shape, rendered by the registry like its own histograms.
    const metric = {
      name: fullName,
      help,
      type: 'histogram',
      aggregator: 'sum',
      reset() {
        h.counts.fill(0);
        h.sum = 0;
        h.count = 0;
      },
      get() {
        const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
        let cumulative = 0;
        h.bounds.forEach((le, i) => {
          cumulative += h.counts[i] as number;
          values.push({ labels: { le }, value: cumulative, metricName: `${fullName}_bucket` });
        });
        values.push({ labels: { le: '+Inf' }, value: h.count, metricName: `${fullName}_bucket` });
        values.push({ labels: {}, value: h.sum, metricName: `${fullName}_sum` });
        values.push({ labels: {}, value: h.count, metricName: `${fullName}_count` });
        return Promise.resolve({ name: fullName, help, type: 'histogram', values, aggregator: 'sum' });
      },
    };
    registry.registerMetric(metric as unknown as Metric);
    return h;
  }

  return {
    registry,
    contentType: registry.contentType,
    counter,
    gauge,
    histogram,
    fastCounter(name, help) {
      const c = new FastCounter();
      counter(name, help, [], function () {
        this.reset();
        this.inc(c.value);
      });
      return c;
    },
    fastCounters,
    fastHistogram,
    internalAuthRefused: counter('internal_auth_refused_total', 'Requests to internal endpoints (/internal/*, /metrics) refused for a missing or wrong token.'),
    dependencies(read) {
      readers.push(read);
    },
    render: () => registry.metrics(),
  };
}

/**
 * Races a scrape-time probe against a deadline, so that a hung dependency
 * makes a series report "down" instead of stalling the scrape.
 */
export function withDeadline<T>(work: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<T>((resolve) => {
    timer = setTimeout(() => resolve(fallback), ms);
    timer.unref();
  });
  return Promise.race([work.catch(() => fallback), late]).finally(() => clearTimeout(timer));
}
