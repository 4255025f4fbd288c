/**
 * HTTP <-> registry. Everything under /internal/ needs the internal token,
 * checked before the body is even parsed, so an outsider gets 401 for any
 * internal path and cannot make us parse a large body. /health is public.
 */
import type { Express, Request, Response, NextFunction } from 'express';
import { z } from 'zod';
import {
  createApp,
  internalAuth,
  parseOr400,
  errorHandler,
  instanceId,
  heartbeatRequest,
  claimsRequest,
  replaceClaimsRequest,
  lookupRequest,
  type PresenceResponse,
  hintsRequest,
  USER_ID_RE,
  httpMetrics,
  mountOperationalRoutes,
  type Metrics,
  type Readiness,
  type HeartbeatResponse,
  type LookupResponse,
  type HealthReport,
  type Logger,
} from '@simplechat/shared';
import type { Registry } from './registry';

export interface HttpDeps {
  registry: Registry;
  /** accepted bearer tokens: the current one, and the previous one during a rotation */
  internalTokens: readonly string[];
  log: Logger;
  metrics: Metrics;
  ready(): Promise<Readiness>;
}

// MAX_USERS_PER_CALL ids of up to 64 characters in both add and remove, with JSON quoting
const BODY_LIMIT = '2mb';

const instanceParams = z.object({ instanceId });
const userParams = z.object({ userId: z.string().regex(USER_ID_RE, 'must be a user id (1-64 characters of A-Z a-z 0-9 _ . -)') });

function requestLog(log: Logger) {
  return (req: Request, res: Response, next: NextFunction): void => {
    if (!log.isLevelEnabled('debug')) return next();
    const startedAt = performance.now();
    res.once('finish', () => {
      log.debug({ method: req.method, path: req.path, status: res.statusCode, ms: Math.round(performance.now() - startedAt) }, 'request');
    });
    next();
  };
}

export function createHttpApp(deps: HttpDeps): Express {
  const { registry, log } = deps;
  const app = createApp({ bodyLimit: BODY_LIMIT, before: [requestLog(log), httpMetrics(deps.metrics), internalAuth(deps.internalTokens, log, () => deps.metrics.internalAuthRefused.inc())] });

  app.get('/health', async (_req, res) => {
    const isUp = await registry.isUp();
    const report: HealthReport = { status: isUp ? 'ok' : 'down', service: 'SvDiscover', dependencies: { redis: isUp ? 'up' : 'down' } };
    res.status(isUp ? 200 : 503).json(report);
  });
  mountOperationalRoutes(app, { service: 'SvDiscover', metrics: deps.metrics, ready: deps.ready });

  app.put('/internal/instances/:instanceId', async (req, res) => {
    const params = parseOr400(instanceParams, req.params, res);
    const body = params && parseOr400(heartbeatRequest, req.body, res);
    if (!params || !body) return;
    const { renewed, hints } = await registry.heartbeat(params.instanceId, body.url);
    const reply: HeartbeatResponse = { leaseMs: registry.leaseMs, renewed, hints };
    res.json(reply);
  });

  app.delete('/internal/instances/:instanceId', async (req, res) => {
    const params = parseOr400(instanceParams, req.params, res);
    if (!params) return;
    await registry.goodbye(params.instanceId);
    res.status(204).end();
  });

  app.put('/internal/instances/:instanceId/claims', async (req, res) => {
    const params = parseOr400(instanceParams, req.params, res);
    const body = params && parseOr400(replaceClaimsRequest, req.body, res);
    if (!params || !body) return;
    await registry.replaceClaims(params.instanceId, body.users);
    res.status(204).end();
  });

  app.post('/internal/claims', async (req, res) => {
    const body = parseOr400(claimsRequest, req.body, res);
    if (!body) return;
    await registry.updateClaims(body.instanceId, { add: body.add, remove: body.remove });
    res.status(204).end();
  });

  app.post('/internal/lookup', async (req, res) => {
    const body = parseOr400(lookupRequest, req.body, res);
    if (!body) return;
    const found = await registry.lookup(body.users);
    // fromEntries defines own properties, so a user id like "__proto__" is a plain key
    const reply: LookupResponse = { users: Object.fromEntries(found) };
    res.json(reply);
  });

  app.post('/internal/presence', async (req, res) => {
    const body = parseOr400(lookupRequest, req.body, res);
    if (!body) return;
    const found = await registry.presence(body.users);
    const reply: PresenceResponse = { users: Object.fromEntries(found) };
    res.json(reply);
  });

  app.get('/internal/users/:userId', async (req, res) => {
    const params = parseOr400(userParams, req.params, res);
    if (!params) return;
    const found = await registry.lookup([params.userId]);
    res.json({ userId: params.userId, instances: found.get(params.userId) ?? [] });
  });

  app.post('/internal/hints', async (req, res) => {
    const body = parseOr400(hintsRequest, req.body, res);
    if (!body) return;
    await registry.addHints(body.instanceId, body.users);
    res.status(204).end();
  });

  app.use((req, res) => {
    res.status(404).json({ error: `not found: ${req.method} ${req.path}` });
  });
  app.use(errorHandler(log));
  return app;
}
