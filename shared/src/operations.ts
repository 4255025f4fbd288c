/**
 * What an operator and an orchestrator ask every service: liveness, readiness,
 * Prometheus metrics, and request counts and durations per route.
 *
 *   GET /health         PROTOCOL.md's report (each service keeps its own)
 *   GET /health/live    200 while the process runs its event loop; never
 *                       looks at dependencies (a restart would not fix them)
 *   GET /health/ready   200 when this copy should get traffic, else 503 with
 *                       the reason (dependency down, draining on shutdown)
 *   GET /metrics        Prometheus text; behind the internal token, like
 *   GET /internal/metrics  everything under /internal/
 */
import type { Express, Request, Response, NextFunction } from 'express';
import type { Metrics } from './metrics';
import { LATENCY_BUCKETS_S } from './metrics';

export interface Readiness {
  ready: boolean;
  /** why not, in a few words an operator understands */
  reason?: string;
  checks?: Record<string, boolean>;
}

export interface OperationalRoutesDeps {
  service: string;
  instanceId?: string;
  metrics: Metrics;
  ready(): Readiness | Promise<Readiness>;
}

/** Counts requests and their durations by route pattern (never the raw path: ids would explode the series). */
export function httpMetrics(metrics: Metrics) {
  const requests = metrics.counter('http_requests_total', 'HTTP requests answered, by route pattern and status.', ['method', 'route', 'status']);
  const duration = metrics.histogram('http_request_duration_seconds', 'Time to answer an HTTP request, by route pattern.', LATENCY_BUCKETS_S, ['route']);
  return (req: Request, res: Response, next: NextFunction): void => {
    const startedAt = performance.now();
    res.once('finish', () => {
      const path: unknown = (req.route as { path?: unknown } | undefined)?.path;
      // no route: a 404, or answered by middleware (static files, a refused token)
      const route = typeof path === 'string' ? path : res.statusCode === 404 ? 'unmatched' : 'other';
      requests.inc({ method: req.method, route, status: String(res.statusCode) });
      duration.observe({ route }, (performance.now() - startedAt) / 1000);
    });
    next();
  };
}

/** Adds /health/live, /health/ready, /metrics and /internal/metrics; call before the 404 handler. */
export function mountOperationalRoutes(app: Express, deps: OperationalRoutesDeps): void {
  const startedAt = Date.now();
  const who = { service: deps.service, ...(deps.instanceId ? { instanceId: deps.instanceId } : {}) };
  const ready = deps.metrics.gauge('ready', 'Whether this copy reports ready for traffic (1) or not (0), as /health/ready answers.');

  app.get('/health/live', (_req, res) => {
    res.json({ status: 'live', ...who, uptimeS: Math.round((Date.now() - startedAt) / 1000) });
  });

  app.get('/health/ready', async (_req, res) => {
    const r = await deps.ready();
    ready.set(r.ready ? 1 : 0);
    res.status(r.ready ? 200 : 503).json({ status: r.ready ? 'ready' : 'not ready', ...who, ...(r.reason ? { reason: r.reason } : {}), ...(r.checks ? { checks: r.checks } : {}) });
  });

  const metricsHandler = async (_req: Request, res: Response): Promise<void> => {
    ready.set((await deps.ready()).ready ? 1 : 0);
    const text = await deps.metrics.render();
    res.set('content-type', deps.metrics.contentType).send(text);
  };
  app.get('/metrics', metricsHandler);
  app.get('/internal/metrics', metricsHandler);
}
