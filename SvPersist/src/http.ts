/** HTTP routes of SvPersist: the cluster-internal read API and /health. Translation only. */
import type { Express } from 'express';
import type { z } from 'zod';
import {
  createApp,
  internalAuth,
  parseOr400,
  errorHandler,
  historyQuery,
  syncQuery,
  byClientQuery,
  positionsRequest,
  sharedWithRequest,
  conversationsQuery,
  reservedParams,
  muteRequest,
  createRoomRequest,
  roomMemberRequest,
  leaveRoomRequest,
  roomParams,
  userRoomsParams,
  userRoomsQuery,
  httpMetrics,
  mountOperationalRoutes,
  type Metrics,
  type Readiness,
  type HealthReport,
  type Logger,
} from '@simplechat/shared';
import type { Store } from './store';
import type { Rooms } from './rooms';
import type { Conversations } from './conversations';

export interface HttpDeps {
  store: Pick<Store, 'history' | 'sync' | 'cursor' | 'byClient' | 'reserveBlocks'>;
  rooms: Rooms;
  conversations: Conversations;
  /** accepted bearer tokens: the current one, and the previous one during a rotation */
  internalTokens: readonly string[];
  health(): Promise<HealthReport>;
  ready(): Promise<Readiness>;
  metrics: Metrics;
  log: Logger;
}

export function createHttpApp(deps: HttpDeps): Express {
  const { store, rooms, log } = deps;
  // 64 KiB: a room created with 200 members of 64-character ids
  const app = createApp({ bodyLimit: '64kb', before: [httpMetrics(deps.metrics), internalAuth(deps.internalTokens, log, () => deps.metrics.internalAuthRefused.inc())] });

  app.get('/health', async (_req, res) => {
    const report = await deps.health();
    res.status(report.status === 'ok' ? 200 : 503).json(report);
  });
  mountOperationalRoutes(app, { service: 'SvPersist', metrics: deps.metrics, ready: deps.ready });

  app.get('/internal/history', async (req, res) => {
    const q = parseOr400(historyQuery, req.query, res);
    if (!q) return;
    const { user, before, limit } = q;
    res.json(q.room !== undefined ? await store.history({ user, room: q.room, before, limit }) : await store.history({ user, with: q.with as string, before, limit }));
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
    res.json({ upTo: await store.reserveBlocks(body.blocks) });
  });

  app.get('/internal/conversations', async (req, res) => {
    const q = parseOr400(conversationsQuery, req.query, res);
    if (!q) return;
    res.json(await deps.conversations.list(q.user, q.before));
  });

  app.get('/internal/positions/:conversation', async (req, res) => {
    const p = parseOr400(reservedParams, req.params, res);
    if (!p) return;
    res.json({ reserved: await deps.conversations.reserved(p.conversation) });
  });

  app.post('/internal/mutes', async (req, res) => {
    const body = parseOr400(muteRequest, req.body, res);
    if (!body) return;
    await deps.conversations.mute(body.user, body.conversation, body.until);
    res.status(204).end();
  });

  app.post('/internal/shared', async (req, res) => {
    const body = parseOr400(sharedWithRequest, req.body, res);
    if (!body) return;
    res.json({ shared: await deps.conversations.sharedWith(body.user, body.others) });
  });

  // Rooms: refusals are answered 200 with ok:false (see internal-api.ts).
  app.post('/internal/rooms', async (req, res) => {
    const body = parseOr400(createRoomRequest, req.body, res);
    if (!body) return;
    res.json(await rooms.create(body));
  });

  app.get('/internal/rooms/:room', async (req, res) => {
    const p = parseOr400(roomParams, req.params, res);
    if (!p) return;
    res.json(await rooms.get(p.room));
  });

  app.get('/internal/rooms/:room/marks', async (req, res) => {
    const p = parseOr400(roomParams, req.params, res);
    if (!p) return;
    res.json(await deps.conversations.roomMarks(p.room));
  });

  // A change of one room's members: the room from the path, the change from the body.
  function roomChange<B extends object>(path: string, schema: z.ZodType<B>, change: (req: { room: string } & B) => Promise<unknown>): void {
    app.post(`/internal/rooms/:room/${path}`, async (req, res) => {
      const p = parseOr400(roomParams, req.params, res);
      const body = p && parseOr400(schema, req.body, res);
      if (!p || !body) return;
      res.json(await change({ room: p.room, ...body }));
    });
  }
  roomChange('members', roomMemberRequest, (r) => rooms.add(r));
  roomChange('remove', roomMemberRequest, (r) => rooms.remove(r));
  roomChange('leave', leaveRoomRequest, (r) => rooms.leave(r));

  app.get('/internal/users/:userId/rooms', async (req, res) => {
    const p = parseOr400(userRoomsParams, req.params, res);
    const q = p && parseOr400(userRoomsQuery, req.query, res);
    if (!p || !q) return;
    res.json(await rooms.listForUser(p.userId, q.after, q.limit));
  });

  app.use((req, res) => {
    res.status(404).json({ error: `no route ${req.method} ${req.path}` });
  });
  app.use(errorHandler(log));
  return app;
}
