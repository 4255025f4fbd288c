/**
 * Server API routes (PROTOCOL.md "Server API"): HTTP <-> ServerApiDomain, nothing more. The same
 * zod schemas validate each request and make the OpenAPI 3.1 document at GET /openapi.json.
 *
 * Mount it at SERVER_API_BASE_PATH ahead of the app's own JSON parser (its 64 KiB limit only
 * holds if it reads the body itself); see docs/SERVER_API.md.
 */
import express, { Router, type Request, type Response, type NextFunction } from 'express';
import { OpenAPIRegistry, OpenApiGeneratorV31, extendZodWithOpenApi, type RouteConfig } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import {
  DomainError,
  UnavailableError,
  isAuthorized,
  createLogThrottle,
  createServerApiSchemas,
  parseServerApiInput,
  errorMessage,
  SERVER_API_BODY_LIMIT_BYTES,
  SERVER_API_ERROR_STATUS,
  type ServerApiDomain,
  type ServerApiSchemas,
  type ServerApiErrorCode,
  type Logger,
  type Metrics,
} from '@simplechat/shared';

export const SERVER_API_BASE_PATH = '/api/v1';

export interface ServerApiDeps {
  /** SERVER_API_KEYS: the current key and, during a rotation, the previous one; empty refuses every request */
  keys: readonly string[];
  domain: ServerApiDomain;
  /** MAX_BODY_CHARS: longest message body in code points */
  maxBodyChars: number;
  log: Logger;
  /** registers simplechat_server_api_requests_total; one Server API per registry */
  metrics?: Pick<Metrics, 'counter'>;
}

/** Without a hint from the domain, a refused caller is told to wait this long. */
const DEFAULT_RETRY_AFTER_MS = 1000;
const LOG_INTERVAL_MS = 60_000;
type Method = 'get' | 'post' | 'delete';
type Infer<S> = S extends z.ZodType ? z.output<S> : undefined;

interface Operation<P extends z.ZodObject | undefined, Q extends z.ZodObject | undefined, B extends z.ZodType | undefined, R extends z.ZodType> {
  operationId: string;
  method: Method;
  /** OpenAPI form, relative to the mount point: /rooms/{room} */
  path: string;
  summary: string;
  description: string;
  status: 200 | 201;
  /** what the success answer holds */
  answer: string;
  params?: P;
  query?: Q;
  body?: B;
  response: R;
  /** error codes worth documenting besides 400, 401, 429, 500 and 503 (every route can answer those) */
  errors: ServerApiErrorCode[];
  run(input: { params: Infer<P>; query: Infer<Q>; body: Infer<B> }): Promise<z.input<R>>;
}

// A list of operations of different types; each one's types are checked where it is defined.
type AnyOperation = Operation<any, any, any, any>;

function operation<P extends z.ZodObject | undefined, Q extends z.ZodObject | undefined, B extends z.ZodType | undefined, R extends z.ZodType>(op: Operation<P, Q, B, R>): AnyOperation {
  return op;
}

const ERROR_DESCRIPTIONS: Record<ServerApiErrorCode, string> = {
  bad_request: 'The request is malformed; the message names every invalid field.',
  unauthorized: 'Missing or unknown key: send Authorization: Bearer <one of SERVER_API_KEYS>.',
  forbidden: 'The request is not allowed.',
  not_found: 'No such room (or route).',
  conflict: 'The (from, id) pair was already used with a different to, room or body.',
  too_large: 'The body is over 64 KiB, or a field is over its limit (the message names it).',
  rate_limited: 'Too many requests; retry after retryAfterMs (also the Retry-After header, in seconds).',
  internal: 'An unexpected failure on the server; it is logged.',
  unavailable: 'A dependency could not do its part: the outcome is unknown; retry with the same id.',
};
const RESPONSE_NAMES: Record<ServerApiErrorCode, string> = {
  bad_request: 'BadRequest',
  unauthorized: 'Unauthorized',
  forbidden: 'Forbidden',
  not_found: 'NotFound',
  conflict: 'Conflict',
  too_large: 'TooLarge',
  rate_limited: 'RateLimited',
  internal: 'Internal',
  unavailable: 'Unavailable',
};
const ALWAYS_POSSIBLE: ServerApiErrorCode[] = ['bad_request', 'unauthorized', 'rate_limited', 'internal', 'unavailable'];

function toExpressPath(path: string): string {
  return path.replace(/\{(\w+)\}/g, ':$1');
}

function sendError(res: Response, code: ServerApiErrorCode, message: string, retryAfterMs?: number): void {
  if (code === 'unauthorized') res.set('WWW-Authenticate', 'Bearer');
  if (code === 'rate_limited') retryAfterMs ??= DEFAULT_RETRY_AFTER_MS;
  if (retryAfterMs !== undefined) {
    retryAfterMs = Math.max(0, Math.round(retryAfterMs));
    res.set('Retry-After', String(Math.ceil(retryAfterMs / 1000)));
  }
  res.status(SERVER_API_ERROR_STATUS[code]).json({ error: { code, message, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) } });
}

/** The Server API's operations; the router and the OpenAPI document are both made from this list. */
function operations(domain: ServerApiDomain, schemas: ServerApiSchemas): AnyOperation[] {
  return [
    operation({
      operationId: 'postMessage',
      method: 'post',
      path: '/messages',
      summary: 'Post a message as any user, to a user or into a room',
      description: 'Answers once the message is durably accepted (like a client ack). (from, id) is the idempotency key, shared with client sends: a repeat answers the first msgId, ts and seq; a repeat with a different to, room or body answers 409.',
      status: 200,
      answer: 'Accepted: the message will be stored and delivered.',
      body: schemas.postMessageRequest,
      response: schemas.postMessageResult,
      errors: ['forbidden', 'not_found', 'conflict', 'too_large'],
      run: ({ body }) => domain.postMessage(body),
    }),
    operation({
      operationId: 'createRoom',
      method: 'post',
      path: '/rooms',
      summary: 'Create a room',
      description: 'The owner is a member; members are added at once. Every member gets a room.event "created".',
      status: 201,
      answer: 'The room created.',
      body: schemas.createRoomRequest,
      response: schemas.roomInfo,
      errors: ['forbidden', 'too_large'],
      run: ({ body }) => domain.createRoom(body),
    }),
    operation({
      operationId: 'getRoom',
      method: 'get',
      path: '/rooms/{room}',
      summary: 'Get a room with its members',
      description: 'The room, its owner and every member.',
      status: 200,
      answer: 'The room.',
      params: schemas.roomParams,
      response: schemas.roomInfo,
      errors: ['not_found'],
      run: ({ params }) => domain.getRoom(params.room),
    }),
    operation({
      operationId: 'addMember',
      method: 'post',
      path: '/rooms/{room}/members',
      summary: 'Add a member to a room',
      description: 'Adding a member twice changes nothing and still answers the room. The change is pushed to every member as a room.event with "by":null,"via":"api".',
      status: 200,
      answer: 'The room after the change.',
      params: schemas.roomParams,
      body: schemas.addMemberRequest,
      response: schemas.roomInfo,
      errors: ['forbidden', 'not_found', 'too_large'],
      run: ({ params, body }) => domain.addMember(params.room, body.userId),
    }),
    operation({
      operationId: 'removeMember',
      method: 'delete',
      path: '/rooms/{room}/members/{userId}',
      summary: 'Remove a member from a room',
      description: 'Removing a non-member changes nothing and still answers the room. The change is pushed to every member, the removed one included, as a room.event with "by":null,"via":"api".',
      status: 200,
      answer: 'The room after the change.',
      params: schemas.memberParams,
      response: schemas.roomInfo,
      errors: ['forbidden', 'not_found'],
      run: ({ params }) => domain.removeMember(params.room, params.userId),
    }),
    operation({
      operationId: 'listUserRooms',
      method: 'get',
      path: '/users/{userId}/rooms',
      summary: "List a user's rooms",
      description: 'Ordered by room id, at most 200 per page, without member lists; while more is true, ask again with after = the last room id.',
      status: 200,
      answer: 'One page of the rooms.',
      params: schemas.userParams,
      query: schemas.userRoomsQuery,
      response: schemas.roomList,
      errors: [],
      run: ({ params, query }) => domain.listUserRooms(params.userId, query.after),
    }),
  ];
}

/**
 * The schemas, named in an OpenAPI registry, and the operations made of them: the router
 * validates with exactly the objects the document is generated from.
 */
function buildServerApi(domain: ServerApiDomain, maxBodyChars: number): { ops: AnyOperation[]; document: object } {
  // Adds .openapi() to zod's prototype, which registry.register() needs; idempotent.
  extendZodWithOpenApi(z);
  const registry = new OpenAPIRegistry();
  const schemas = createServerApiSchemas({ maxBodyChars, named: (name, schema) => registry.register(name, schema) });
  const ops = operations(domain, schemas);
  registry.registerComponent('securitySchemes', 'serverApiKey', { type: 'http', scheme: 'bearer', description: 'One of SERVER_API_KEYS (a current and, during a rotation, a previous key).' });
  const responseRefs = {} as Record<ServerApiErrorCode, { $ref: string }>;
  for (const code of Object.keys(ERROR_DESCRIPTIONS) as ServerApiErrorCode[]) {
    const name = RESPONSE_NAMES[code];
    const headers: Record<string, { description: string; schema: { type: 'integer' | 'string'; minimum?: number } }> | undefined =
      code === 'rate_limited'
        ? { 'Retry-After': { description: 'Seconds to wait before retrying.', schema: { type: 'integer', minimum: 0 } } }
        : code === 'unauthorized'
          ? { 'WWW-Authenticate': { description: 'Bearer', schema: { type: 'string' } } }
          : undefined;
    registry.registerComponent('responses', name, {
      description: `${code}: ${ERROR_DESCRIPTIONS[code]}`,
      ...(headers ? { headers } : {}),
      content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
    });
    responseRefs[code] = { $ref: `#/components/responses/${name}` };
  }

  for (const op of ops) {
    const responses: RouteConfig['responses'] = {
      [op.status]: { description: op.answer, content: { 'application/json': { schema: op.response } } },
    };
    for (const code of [...ALWAYS_POSSIBLE, ...op.errors]) responses[SERVER_API_ERROR_STATUS[code]] = responseRefs[code];
    registry.registerPath({
      method: op.method,
      path: op.path,
      operationId: op.operationId,
      summary: op.summary,
      description: op.description,
      security: [{ serverApiKey: [] }],
      request: {
        ...(op.params ? { params: op.params } : {}),
        ...(op.query ? { query: op.query } : {}),
        ...(op.body ? { body: { required: true, content: { 'application/json': { schema: op.body } } } } : {}),
      },
      responses,
    });
  }
  registry.registerPath({
    method: 'get',
    path: '/openapi.json',
    operationId: 'getOpenApi',
    summary: 'This document',
    description: 'Needs no key.',
    security: [],
    responses: { 200: { description: 'The OpenAPI 3.1 document of the Server API.', content: { 'application/json': { schema: { type: 'object' } } } } },
  });

  const document = new OpenApiGeneratorV31(registry.definitions).generateDocument({
    openapi: '3.1.0',
    info: {
      title: 'SimpleChat Server API',
      version: '1.1.0',
      description: `For the product's own backend: post messages as any user and manage rooms. JSON in and out, bodies up to ${SERVER_API_BODY_LIMIT_BYTES / 1024} KiB. Errors are {"error":{"code":..,"message":..}} with the matching status. See docs/SERVER_API.md.`,
    },
    servers: [{ url: SERVER_API_BASE_PATH }],
    security: [{ serverApiKey: [] }],
  });
  return { ops, document };
}

/** The OpenAPI 3.1 document of the Server API, as GET /openapi.json serves it. */
export function serverApiOpenApi(options: { maxBodyChars: number }): object {
  // The domain is never called while building the document.
  return buildServerApi({} as ServerApiDomain, options.maxBodyChars).document;
}

/**
 * The Server API as an express Router for SERVER_API_BASE_PATH. Every request but
 * GET /openapi.json needs a key, checked before routing and before the body is read.
 */
export function createServerApi(deps: ServerApiDeps): Router {
  const { domain, log } = deps;
  const keys = [...deps.keys];
  const { ops, document } = buildServerApi(domain, deps.maxBodyChars);
  const openApiJson = JSON.stringify(document);
  const requests = deps.metrics?.counter('server_api_requests_total', 'Server API requests answered, by operation (none: refused before routing) and code (ok or the error code).', ['operation', 'code']);
  const refusals = createLogThrottle(LOG_INTERVAL_MS);
  const unavailable = createLogThrottle(LOG_INTERVAL_MS);

  const router = Router();
  router.use((_req, res, next) => {
    res.once('finish', () => {
      const operationId = typeof res.locals.operationId === 'string' ? res.locals.operationId : 'none';
      const code = typeof res.locals.errorCode === 'string' ? res.locals.errorCode : res.statusCode < 400 ? 'ok' : 'other';
      requests?.inc({ operation: operationId, code });
    });
    next();
  });
  const fail = (res: Response, code: ServerApiErrorCode, message: string, retryAfterMs?: number) => {
    res.locals.errorCode = code;
    sendError(res, code, message, retryAfterMs);
  };

  router.get('/openapi.json', (_req, res) => {
    res.type('application/json').send(openApiJson);
  });

  router.use((req, res, next) => {
    if (isAuthorized(req.headers.authorization, keys)) return next();
    if (refusals.shouldLog()) log.warn({ path: req.originalUrl.split('?')[0], method: req.method, remote: req.socket.remoteAddress, refusedSoFar: refusals.count }, 'refused Server API request without a valid key');
    fail(res, 'unauthorized', 'the Server API needs Authorization: Bearer <key>, with one of SERVER_API_KEYS');
  });
  router.use((req, _res, next) => {
    // Another parser read the body first: this router's 64 KiB limit would not have applied.
    if (req.body !== undefined) return next(new Error(`the Server API router must be mounted ahead of the app's body parser (request body already parsed at ${req.originalUrl.split('?')[0]})`));
    next();
  });
  router.use(express.json({ limit: SERVER_API_BODY_LIMIT_BYTES }));

  for (const op of ops) {
    router[op.method](toExpressPath(op.path), async (req: Request, res: Response, next: NextFunction) => {
      res.locals.operationId = op.operationId;
      const inputs = [
        op.params ? parseServerApiInput(op.params, req.params, 'path') : undefined,
        op.query ? parseServerApiInput(op.query, req.query, 'query') : undefined,
        op.body ? parseServerApiInput(op.body, req.body ?? null, 'request body') : undefined,
      ];
      const problems = inputs.filter((r) => r !== undefined && !r.ok);
      if (problems.length > 0) {
        const code = problems.every((p) => p.code === 'too_large') ? 'too_large' : 'bad_request';
        let message = problems.map((p) => p.message).join('; ');
        if (op.body && req.body === undefined && !req.is('application/json')) message += ' (send the body as JSON with Content-Type: application/json)';
        log.debug({ operation: op.operationId, fields: problems.flatMap((p) => p.fields) }, 'refused a Server API request');
        fail(res, code, message);
        return;
      }
      const value = <T>(r: (typeof inputs)[number]): T => (r?.ok ? (r.value as T) : (undefined as T));
      try {
        const result = await op.run({ params: value(inputs[0]), query: value(inputs[1]), body: value(inputs[2]) });
        // The answer is exactly the documented shape; a domain answer that is not is a bug (500).
        res.status(op.status).json(op.response.parse(result));
      } catch (err) {
        next(err);
      }
    });
  }

  router.use((req, res) => {
    fail(res, 'not_found', `no route ${req.method} ${req.originalUrl.split('?')[0]}; see ${SERVER_API_BASE_PATH}/openapi.json`);
  });

  router.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const operationId = typeof res.locals.operationId === 'string' ? res.locals.operationId : undefined;
    if (err instanceof DomainError && Object.hasOwn(SERVER_API_ERROR_STATUS, err.code)) {
      if (err.code === 'unavailable' && unavailable.shouldLog()) log.warn({ operation: operationId, err: err.message, unavailableSoFar: unavailable.count }, 'Server API request answered unavailable');
      else log.debug({ operation: operationId, code: err.code, err: err.message }, 'Server API request refused by the domain');
      fail(res, err.code, err.message, err.retryAfterMs);
      return;
    }
    if (err instanceof UnavailableError) {
      // Its message names internal hosts: logged, not answered.
      if (unavailable.shouldLog()) log.warn({ operation: operationId, err: err.message, unavailableSoFar: unavailable.count }, 'Server API request answered unavailable');
      fail(res, 'unavailable', 'the service could not complete the request right now, so its outcome is unknown; retry with the same id');
      return;
    }
    // body-parser: too large, invalid JSON, unsupported charset or encoding, aborted upload
    const e = err as { type?: unknown; status?: unknown; expose?: unknown };
    if (e.type === 'entity.too.large') {
      fail(res, 'too_large', `request body is larger than ${SERVER_API_BODY_LIMIT_BYTES} bytes (64 KiB)`);
      return;
    }
    if (e.type === 'entity.parse.failed') {
      fail(res, 'bad_request', 'request body is not valid JSON');
      return;
    }
    if (typeof e.status === 'number' && e.status >= 400 && e.status < 500 && e.expose === true) {
      fail(res, 'bad_request', errorMessage(err));
      return;
    }
    log.error({ err, operation: operationId, method: req.method, path: req.originalUrl.split('?')[0] }, 'Server API request failed');
    if (res.headersSent) return;
    fail(res, 'internal', 'internal error; it has been logged');
  });
  return router;
}
