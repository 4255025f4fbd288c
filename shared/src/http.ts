/** HTTP plumbing shared by the services: internal auth, JSON errors, an undici JSON client. */
import { timingSafeEqual, createHash } from 'node:crypto';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type Request, type Response, type NextFunction, type Express, type RequestHandler } from 'express';
import { Pool, type Dispatcher } from 'undici';
import type { z } from 'zod';
import type { Logger } from './log';
import { UnavailableError, SimpleChatError } from './errors';
import { createLogThrottle } from './log-throttle';

export const INTERNAL_PREFIX = '/internal/';

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Constant-time check of `Authorization: Bearer <token>` against the accepted tokens. */
export function isAuthorized(header: string | undefined, tokens: readonly string[]): boolean {
  if (!header || !header.startsWith('Bearer ')) return false;
  const given = digest(header.slice(7));
  let ok = false;
  for (const t of tokens) ok = timingSafeEqual(given, digest(t)) || ok;
  return ok;
}

/**
 * Whether a request path needs the internal token: /internal/* and /metrics.
 * Express routes ignore case and a trailing slash, so this check does too
 * (otherwise /INTERNAL/deliver would reach the route without a token).
 */
export function isInternalPath(path: string): boolean {
  const p = path.toLowerCase().replace(/\/+$/, '');
  return p === '/internal' || p.startsWith(INTERNAL_PREFIX) || p === '/metrics';
}

const REFUSED_LOG_INTERVAL_MS = 60_000;

/**
 * Every internal request must carry the internal token, checked before
 * routing so that even unknown internal paths answer 401 to outsiders.
 * Refusals are logged at most once a minute (with the count): a scanner must
 * not be able to flood the logs.
 */
export function internalAuth(tokens: readonly string[], log: Logger, onRefused?: () => void) {
  const refusals = createLogThrottle(REFUSED_LOG_INTERVAL_MS);
  return (req: Request, res: Response, next: NextFunction): void => {
    if (!isInternalPath(req.path)) return next();
    if (isAuthorized(req.headers.authorization, tokens)) return next();
    onRefused?.();
    if (refusals.shouldLog()) log.warn({ path: req.path, method: req.method, remote: req.socket.remoteAddress, refusedSoFar: refusals.count }, 'refused internal request without a valid token');
    else log.debug({ path: req.path, method: req.method, remote: req.socket.remoteAddress }, 'refused internal request without a valid token');
    res.status(401).json({ error: 'unauthorized: internal endpoints need Authorization: Bearer <INTERNAL_TOKEN>' });
  };
}

/** Parses with a schema or answers 400 with what was wrong. */
export function parseOr400<T>(schema: z.ZodType<T>, value: unknown, res: Response): T | undefined {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  res.status(400).json({ error: `bad request: ${issue ? `${issue.path.join('.') || 'body'}: ${issue.message}` : 'invalid'}` });
  return undefined;
}

/**
 * An express app with JSON bodies. `before` runs ahead of the body parser, so
 * internal auth refuses outsiders before their body is read.
 */
export function createApp(options: { bodyLimit?: string; before?: RequestHandler[] } = {}): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  for (const handler of options.before ?? []) app.use(handler);
  app.use(express.json({ limit: options.bodyLimit ?? '1mb' }));
  return app;
}

/** Last middleware: turns body-parser and handler failures into one-line JSON errors. */
export function errorHandler(log: Logger) {
  return (err: unknown, _req: Request, res: Response, _next: NextFunction): void => {
    const e = err as { status?: number; type?: string; message?: string };
    if (e.type === 'entity.too.large') {
      res.status(413).json({ error: 'request body too large' });
      return;
    }
    if (e.type === 'entity.parse.failed') {
      res.status(400).json({ error: 'request body is not valid JSON' });
      return;
    }
    if (err instanceof UnavailableError) {
      res.status(503).json({ error: err.message });
      return;
    }
    log.error({ err }, 'request failed');
    res.status(typeof e.status === 'number' && e.status >= 400 && e.status < 600 ? e.status : 500).json({ error: 'internal error' });
  };
}

export function listen(app: Express, port: number, host: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, host);
    server.once('listening', () => resolve(server));
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') reject(new SimpleChatError('port_in_use', `port ${port} on ${host} is already in use; stop the other process or pass --port`));
      else reject(err);
    });
  });
}

export function boundPort(server: Server): number {
  return (server.address() as AddressInfo).port;
}

/**
 * Stops listening and closes keep-alive connections: idle ones at once, the
 * rest after graceMs (their in-flight request had that long to finish);
 * otherwise a keep-alive client would hold the close for its whole timeout.
 */
export function closeServer(server: Server, graceMs = 1000): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => server.closeAllConnections(), graceMs);
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections();
  });
}

export interface JsonClientOptions {
  baseUrl: string;
  token: string;
  timeoutMs: number;
  connections?: number;
  /** name used in error messages, e.g. "SvDiscover" */
  name: string;
}

/** A keep-alive undici pool to one service, speaking JSON with the internal token. */
export interface JsonClient {
  readonly baseUrl: string;
  request<T>(method: Dispatcher.HttpMethod, path: string, schema: z.ZodType<T> | null, body?: unknown): Promise<T>;
  close(): Promise<void>;
}

export function createJsonClient(options: JsonClientOptions): JsonClient {
  const pool = new Pool(options.baseUrl, {
    connections: options.connections ?? 16,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    headersTimeout: options.timeoutMs,
    bodyTimeout: options.timeoutMs,
    connectTimeout: Math.min(options.timeoutMs, 5_000),
  });
  const authorization = `Bearer ${options.token}`;
  let closing: Promise<void> | undefined;
  return {
    baseUrl: options.baseUrl,
    async request<T>(method: Dispatcher.HttpMethod, path: string, schema: z.ZodType<T> | null, body?: unknown): Promise<T> {
      let res: Dispatcher.ResponseData;
      try {
        res = await pool.request({
          method,
          path,
          headers: body === undefined ? { authorization } : { authorization, 'content-type': 'application/json' },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (err) {
        throw new UnavailableError(`${options.name} at ${options.baseUrl} did not answer ${method} ${path.split('?')[0]}: ${(err as Error).message || (err as Error).name}`, { cause: err });
      }
      const text = await res.body.text().catch(() => '');
      if (res.statusCode >= 300) {
        throw new UnavailableError(`${options.name} answered ${res.statusCode} to ${method} ${path.split('?')[0]}: ${text.slice(0, 200)}`);
      }
      if (!schema) return undefined as T;
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        throw new UnavailableError(`${options.name} answered ${method} ${path.split('?')[0]} with invalid JSON`);
      }
      const parsed = schema.safeParse(json);
      if (!parsed.success) throw new UnavailableError(`${options.name} answered ${method} ${path.split('?')[0]} with an unexpected shape: ${parsed.error.issues[0]?.message}`);
      return parsed.data;
    },
    close() {
      closing ??= pool.close().catch(() => undefined);
      return closing;
    },
  };
}

export interface HealthReport {
  status: 'ok' | 'degraded' | 'down';
  service: string;
  instanceId?: string;
  dependencies: Record<string, 'up' | 'down'>;
}
