/** HTTP routes of SvPersist: the cluster-internal read API and /health. Translation only. */
import type { Express } from 'express';
import {
  createApp,
  internalAuth,
  parseOr400,
  errorHandler,
  historyQuery,
  syncQuery,
  byClientQuery,
  positionsRequest,
  httpMetrics,
  mountOperationalRoutes,
  type Metrics,
  type Readiness,
  type HealthReport,
  type Logger,
} from '@simplechat/shared';
import type { Store } from './store';

export interface HttpDeps {
  store: Pick<Store, 'history' | 'sync' | 'cursor' | 'byClient' | 'reservePositions'>;
  /** accepted bearer tokens: the current one, and the previous one during a rotation */
  internalTokens: readonly string[];
  health(): Promise<HealthReport>;
  ready(): Promise<Readiness>;
  metrics: Metrics;
  log: Logger;
}

export function createHttpApp(deps: HttpDeps): Express {
  const { store, log } = deps;
  const app = createApp({ bodyLimit: '16kb', before: [httpMetrics(deps.metrics), internalAuth(deps.internalTokens, log, () => deps.metrics.internalAuthRefused.inc())] });

  app.get('/health', async (_req, res) => {
    const report = await deps.health();
    res.status(report.status === 'ok' ? 200 : 503).json(report);
  });
  mountOperationalRoutes(app, { service: 'SvPersist', metrics: deps.metrics, ready: deps.ready });

  app.get('/internal/history', async (req, res) => {
    const q = parseOr400(historyQuery, req.query, res);
    if (!q) return;
    res.json(await store.history(q));
  });

  app.get('/internal/sync', async (req, res) => {
    const q = parseOr400(syncQuery, req.query, res);
    if (!q) return;
    res.json(await store.sync(q));
  });

  app.get('/internal/cursor', async (_req, res) => {
    res.json(await store.cursor());
  });

  app.get('/internal/messages/by-client', async (req, res) => {
    const q = parseOr400(byClientQuery, req.query, res);
    if (!q) return;
    res.json({ message: await store.byClient(q.sender, q.clientId) });
  });

  app.post('/internal/positions', async (req, res) => {
    const body = parseOr400(positionsRequest, req.body, res);
    if (!body) return;
    res.json({ upTo: await store.reservePositions(body.conversation, body.count) });
  });

  app.use((req, res) => {
    res.status(404).json({ error: `no route ${req.method} ${req.path}` });
  });
  app.use(errorHandler(log));
  return app;
}
