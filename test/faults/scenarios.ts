/**
 * The fault scenarios. Each injects one fault into a running
 * cluster under steady load and returns once the fault is over; the runner
 * (faults.test.ts) then lets traffic settle and checks the books. Checks that
 * are specific to a fault (close codes, claims, hints, memory...) are
 * recorded with ctx.check and asserted like the books.
 */
import amqp from 'amqplib';
import { createClient } from 'redis';
import type WebSocket from 'ws';
import { directConversation, encodePayload, partitionRoutingKey, topology, type Envelope } from '@simplechat/shared';
import type { ClusterOptions, Cluster } from './cluster';
import { TIMINGS, metricValue } from './cluster';
import type { Infra } from './infra';
import type { Conn, Load, LoadOptions } from './load';
import { connsOn, type Expected } from './books';
import { sleep, waitUntil } from './procs';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export interface Ctx {
  infra: Infra;
  cluster: Cluster;
  load: Load;
  /** messages put on the books by the scenario itself (injected into the queue) */
  extra: Expected[];
  checks: Check[];
  notes: string[];
  check(name: string, ok: boolean, detail?: string): void;
  /** polls until probe() is true; records the check with the time it took; never throws */
  waitCheck(name: string, probe: () => boolean | Promise<boolean>, timeoutMs: number): Promise<number | undefined>;
  /** when the fault was injected (set by the runner, adjustable by the scenario) */
  faultAt: number;
  /** when the fault was over (restart done, process resumed) */
  healedAt?: number;
}

export interface Scenario {
  key: string;
  name: string;
  cluster?: Omit<ClusterOptions, 'tag'>;
  load?: Partial<LoadOptions>;
  /** acked messages of steady traffic before the fault (default WARMUP_ACKS) */
  warmupAcks?: number;
  /** acked messages of traffic after the fault is over, before the load stops (default WARMUP_ACKS) */
  afterAcks?: number;
  inject(ctx: Ctx): Promise<void>;
  /** after the books settled */
  verify?(ctx: Ctx): Promise<void> | void;
}

const usersOf = (conns: Conn[]) => [...new Set(conns.map((c) => c.user))];

/** `unavailable` answers the load's connections got between two times */
const unavailableBetween = (load: Load, from: number, to: number) => load.conns.reduce((n, c) => n + c.unavailableAt.filter((t) => t >= from && t <= to).length, 0);

async function lookupHas(cluster: Cluster, users: string[], instanceId: string): Promise<boolean> {
  const where = await cluster.lookup(users);
  return [...where.values()].some((ids) => ids.includes(instanceId));
}

/** Every user maps to exactly the instances its registered connections are on. */
export async function claimsMatch(cluster: Cluster, load: Load): Promise<boolean> {
  const where = await cluster.lookup(load.users);
  return load.users.every((u) => {
    const want = new Set(load.connsOf(u).filter((c) => c.client.state === 'ready').map((c) => c.client.instanceId));
    const got = new Set(where.get(u) ?? []);
    return want.size === got.size && [...want].every((i) => got.has(i as string));
  });
}

export const scenarios: Scenario[] = [
  {
    key: 'ws-sigkill',
    name: '1. SIGKILL an SvWebsocket instance under load',
    async inject(ctx) {
      const victims = connsOn(ctx.load, 'ws-1');
      ctx.check('the instance held clients when killed', victims.length > 0, `${victims.length} connections on ws-1`);
      ctx.cluster.ws[0]?.kill('SIGKILL');
      await ctx.cluster.ws[0]?.proc.exited;
      await ctx.waitCheck('its clients re-registered on the other instance', () => victims.every((c) => c.client.state === 'ready' && c.client.instanceId === 'ws-2'), 15_000);
      ctx.healedAt = Date.now();
    },
  },
  {
    key: 'persist-sigkill',
    name: '2. SIGKILL SvPersist in the middle of a batch, restart it',
    cluster: { persistEnv: { MAX_BATCH_DELAY_MS: '50' } },
    async inject(ctx) {
      const db = ctx.cluster.databaseUrl.split('/').pop() as string;
      // Kill while a batch transaction of SvPersist is open in Postgres.
      let isOpen = false;
      const deadline = Date.now() + 15_000;
      while (!isOpen && Date.now() < deadline) {
        const rows = await ctx.cluster.query<{ n: string }>(
          `SELECT count(*)::text AS n FROM pg_stat_activity
           WHERE datname = $1 AND application_name = 'SvPersist' AND xact_start IS NOT NULL
             AND (state = 'idle in transaction' OR query ILIKE '%advisory_xact_lock%' OR query ILIKE '%INSERT INTO messages%')`,
          [db],
        );
        isOpen = Number(rows[0]?.n ?? 0) > 0;
        if (isOpen) ctx.cluster.persist.kill('SIGKILL');
      }
      ctx.faultAt = Date.now();
      ctx.check('killed while a batch transaction was open', isOpen, isOpen ? 'seen in pg_stat_activity right before SIGKILL' : 'no open batch transaction seen within 15 s');
      if (!isOpen) ctx.cluster.persist.kill('SIGKILL');
      await ctx.cluster.persist.proc.exited;
      // Down until sends were acked without it (the queue holds them), then started again.
      const downAt = Date.now();
      const ackedSinceDown = () => [...ctx.load.records.values()].filter((r) => r.ackedAt !== undefined && r.ackedAt > downAt).length;
      await ctx.waitCheck('sends acked while SvPersist was down', () => ackedSinceDown() >= 20, 15_000);
      const ms = await ctx.cluster.persist.start();
      ctx.notes.push(`SvPersist down ${((Date.now() - downAt) / 1000).toFixed(1)} s (${ackedSinceDown()} sends acked meanwhile), restarted in ${ms} ms`);
      ctx.healedAt = Date.now();
    },
  },
  {
    key: 'rabbitmq-stop',
    name: '3. RabbitMQ stopped under load until sends are refused, then started',
    afterAcks: 120,
    async inject(ctx) {
      await ctx.infra.rabbit.stop();
      const downAt = Date.now();
      // Down until the gateways have refused a good number of sends (their reconnects back off meanwhile).
      await ctx.waitCheck('sends answered unavailable while the broker is down', () => unavailableBetween(ctx.load, downAt, Date.now()) >= 60, 30_000);
      const startAt = Date.now();
      const ms = await ctx.infra.rabbit.start();
      ctx.notes.push(`RabbitMQ down ${Math.round((startAt - downAt) / 1000)} s, start took ${ms} ms`);
      const acksWhileDown = [...ctx.load.records.values()].filter((r) => r.ackedAt !== undefined && r.ackedAt > downAt + 100 && r.ackedAt < startAt).length;
      ctx.check('no ack while the broker was down', acksWhileDown === 0, `${acksWhileDown} acks between the stop and the start`);
      const unavailable = unavailableBetween(ctx.load, downAt, startAt);
      ctx.check('sends during the outage were answered unavailable', unavailable > 0, `${unavailable} unavailable answers`);
      await ctx.waitCheck('publishers and the consumer reconnected by themselves', async () => {
        const h = await Promise.all([ctx.cluster.persist, ...ctx.cluster.ws].map((n) => n.health().catch(() => ({ status: 0, body: {} }))));
        return h.every((x) => x.status === 200);
      }, 20_000);
      ctx.healedAt = Date.now();
    },
  },
  {
    key: 'redis-restart',
    name: '4. Redis restarted empty',
    async inject(ctx) {
      const { load, cluster } = ctx;
      // Messages acked before the restart, to resend after it as if their acks had been lost.
      const resend = [...load.records.values()].filter((r) => r.msgId !== undefined).sort((a, b) => (b.ackedAt ?? 0) - (a.ackedAt ?? 0)).slice(0, 40);
      await ctx.infra.redis.stop(true);
      await ctx.infra.redis.start();
      const upAt = Date.now();
      const rebuilt = await ctx.waitCheck('discovery state rebuilt (claims re-asserted)', () => claimsMatch(cluster, load), TIMINGS.LEASE_MS * 3);
      ctx.check('claims rebuilt within one lease period', rebuilt !== undefined && Date.now() - upAt <= TIMINGS.LEASE_MS + 500, `${rebuilt} ms after Redis answered (lease ${TIMINGS.LEASE_MS} ms)`);
      await ctx.waitCheck('every connection got sync.hint', () => load.conns.every((c) => c.hintsAt.some((t) => t >= ctx.faultAt)), 5000);
      const before = new Map(resend.map((r) => [`${r.sender}|${r.id}`, r.msgId]));
      await Promise.all(resend.map((r) => load.send(load.connsOf(r.sender)[0] as Conn, r.to, r.body, r.id)));
      const changed = resend.filter((r) => r.ackMsgIds.size > 1 || r.msgId !== before.get(`${r.sender}|${r.id}`));
      ctx.check('resends of messages acked before the restart kept their first msgId', changed.length === 0, `${resend.length} resent, ${changed.length} got a second msgId`);
      ctx.healedAt = Date.now();
    },
  },
  {
    key: 'discover-restart',
    name: '5. SvDiscover killed and restarted',
    async inject(ctx) {
      ctx.cluster.discover.kill('SIGKILL');
      await ctx.cluster.discover.proc.exited;
      // Messaging goes on without the registry: down until sends were acked meanwhile.
      const downAt = Date.now();
      await ctx.waitCheck('sends acked while SvDiscover was down', () => [...ctx.load.records.values()].filter((r) => r.ackedAt !== undefined && r.ackedAt > downAt).length >= 40, 15_000);
      const downUntil = Date.now();
      const ms = await ctx.cluster.discover.start();
      ctx.notes.push(`SvDiscover down ${Math.round((downUntil - ctx.faultAt) / 100) / 10} s, restart took ${ms} ms`);
      ctx.healedAt = Date.now();
      await ctx.waitCheck('claims re-asserted after the restart', () => claimsMatch(ctx.cluster, ctx.load), 5000);
    },
    verify(ctx) {
      // Same-instance delivery never stops: those messages were seen live, not by sync.
      let same = 0;
      let notLive = 0;
      let cross = 0;
      for (const r of ctx.load.records.values()) {
        if (r.firstSentAt < ctx.faultAt || r.firstSentAt > (ctx.healedAt ?? 0) || !r.msgId || !r.senderInstance) continue;
        const recipients = ctx.load.connsOf(r.to);
        const isSame = [...r.recipientInstances.values()].every((i) => i === r.senderInstance);
        if (!isSame) {
          cross++;
          continue;
        }
        same++;
        for (const c of recipients) {
          const s = c.seen.get(r.msgId);
          if (s && s.source === 'sync') notLive++;
        }
      }
      ctx.check('same-instance messages were delivered live during the outage', same > 0 && notLive === 0, `${same} same-instance messages, ${notLive} reached a recipient only by sync; ${cross} cross-instance ones`);
      const acked = [...ctx.load.records.values()].filter((r) => r.ackedAt !== undefined && r.ackedAt > ctx.faultAt && r.ackedAt < (ctx.healedAt ?? 0)).length;
      ctx.check('acks went on while SvDiscover was down', acked > 0, `${acked} acks`);
    },
  },
  {
    key: 'peer-sigstop',
    name: '6. A peer SvWebsocket instance hangs (SIGSTOP)',
    async inject(ctx) {
      const { cluster, load } = ctx;
      const victims = connsOn(load, 'ws-2');
      ctx.check('the hung instance held clients', victims.length > 0, `${victims.length} connections on ws-2`);
      cluster.ws[1]?.kill('SIGSTOP');
      await ctx.waitCheck('its claims expired', async () => !(await lookupHas(cluster, load.users, 'ws-2')), TIMINGS.LEASE_MS * 2 + 1000);
      // Hung until the other instance's clients had a good number of sends acked, its /health sampled meanwhile.
      let worstHealth = 0;
      const ackedOnWs1 = () => [...load.records.values()].filter((r) => r.senderInstance === 'ws-1' && r.firstSentAt >= ctx.faultAt && r.ackedAt !== undefined).length;
      await ctx.waitCheck('sends of the other instance acked during the hang', async () => {
        const t0 = Date.now();
        await cluster.ws[0]?.health().catch(() => undefined);
        worstHealth = Math.max(worstHealth, Date.now() - t0);
        return ackedOnWs1() >= 100;
      }, 30_000);
      ctx.check('the other instance kept answering promptly', worstHealth < 1000, `slowest /health of ws-1 during the hang: ${worstHealth} ms`);
      cluster.ws[1]?.kill('SIGCONT');
      ctx.healedAt = Date.now();
      ctx.notes.push(`ws-2 stopped ${((ctx.healedAt - ctx.faultAt) / 1000).toFixed(1)} s, then resumed`);
    },
    verify(ctx) {
      // The sender's instance did not stall: acks of its clients stayed quick while forwards to the peer timed out
      // (a stall would hold about half of them, those to users of the hung peer, for a forward timeout or more).
      const latencies: number[] = [];
      for (const r of ctx.load.records.values()) {
        if (r.senderInstance !== 'ws-1' || r.firstSentAt < ctx.faultAt || r.firstSentAt > (ctx.healedAt ?? 0) || r.ackedAt === undefined) continue;
        latencies.push(r.ackedAt - r.firstSentAt);
      }
      latencies.sort((a, b) => a - b);
      const p90 = latencies[Math.floor(latencies.length * 0.9)] ?? Infinity;
      const worst = latencies.at(-1) ?? Infinity;
      ctx.check('senders on the other instance were not stalled', latencies.length > 0 && p90 < TIMINGS.FORWARD_TIMEOUT_MS, `${latencies.length} sends from ws-1 clients during the hang: ack p90 ${p90} ms, slowest ${worst} ms (forward timeout ${TIMINGS.FORWARD_TIMEOUT_MS} ms)`);
    },
  },
  {
    key: 'postgres-stop',
    name: '7. PostgreSQL stopped under load until 40 sends were acked and their batch failed 3 times',
    afterAcks: 120,
    async inject(ctx) {
      const retries = async () => metricValue(await ctx.cluster.persist.metrics(), 'insert_retries_total');
      const retriesBefore = await retries();
      await ctx.infra.postgres.stop();
      const downAt = Date.now();
      const ackedSinceDown = () => [...ctx.load.records.values()].filter((r) => r.ackedAt !== undefined && r.ackedAt > downAt).length;
      // Down until the queue has absorbed acked sends and SvPersist has failed to store its batch a few times.
      await ctx.waitCheck('sends acked while Postgres was down, their batch retried', async () => ackedSinceDown() >= 40 && (await retries()) - retriesBefore >= 3, 30_000);
      const startAt = Date.now();
      const ms = await ctx.infra.postgres.start();
      ctx.notes.push(`Postgres down ${Math.round((startAt - downAt) / 1000)} s, start took ${ms} ms`);
      const acked = [...ctx.load.records.values()].filter((r) => r.ackedAt !== undefined && r.ackedAt > downAt && r.ackedAt < startAt).length;
      ctx.check('acks went on while Postgres was down (the queue absorbs the backlog)', acked > 0, `${acked} acks during the outage`);
      ctx.healedAt = Date.now();
    },
  },
  {
    key: 'ws-sigterm',
    name: '8. SIGTERM on an instance (graceful drain)',
    async inject(ctx) {
      const { cluster, load } = ctx;
      const victims = connsOn(load, 'ws-1');
      ctx.check('the instance held clients', victims.length > 0, `${victims.length} connections on ws-1`);
      // A burst right before the signal, so that sends are in flight (confirms pending) when the drain starts.
      for (let i = 0; i < 200; i++) void load.send(victims[i % victims.length] as Conn, load.users[i % load.users.length] as string);
      await sleep(30);
      ctx.faultAt = Date.now();
      cluster.ws[0]?.kill('SIGTERM');
      const code = await cluster.ws[0]?.proc.exited;
      const exitedAt = Date.now();
      const stillClaimed = await lookupHas(cluster, load.users, 'ws-1');
      ctx.check('its claims were dropped at once', !stillClaimed, `lookup ${Date.now() - exitedAt} ms after exit (the lease would last ${TIMINGS.LEASE_MS} ms)`);
      ctx.check('it exited cleanly', code === 0, `exit ${code} after ${exitedAt - ctx.faultAt} ms`);
      const got1001 = victims.filter((c) => c.closeCodes.some((cc) => cc.code === 1001 && cc.at >= ctx.faultAt));
      ctx.check('its clients got close 1001', got1001.length === victims.length, `${got1001.length}/${victims.length}`);
      // In flight: sent (well) before the SIGTERM, not answered yet when it came. Each must be answered before the close.
      const byKey = new Map(victims.map((c) => [c.key, c]));
      let inFlight = 0;
      let unanswered = 0;
      let acked = 0;
      for (const r of load.records.values()) {
        const c = byKey.get(r.connKey);
        if (!c || r.firstSentAt > ctx.faultAt - 20) continue;
        const answeredAt = c.answers.get(r.id);
        const closeAt = c.closeCodes.find((cc) => cc.at >= ctx.faultAt)?.at ?? Infinity;
        if (r.ackedAt !== undefined && r.ackedAt < ctx.faultAt) continue;
        inFlight++;
        if (answeredAt === undefined || answeredAt < ctx.faultAt - 20 || answeredAt > closeAt) unanswered++;
        else if (r.ackedAt !== undefined && r.ackedAt <= closeAt) acked++;
      }
      ctx.check('every send in flight was answered before the close', unanswered === 0, `${inFlight} sends in flight at the SIGTERM: ${acked} acked (confirms flushed) and ${inFlight - acked - unanswered} answered unavailable before the 1001 close, ${unanswered} left unanswered`);
      await ctx.waitCheck('its clients reconnected to the other instance', () => victims.every((c) => c.client.state === 'ready' && c.client.instanceId === 'ws-2'), 10_000);
      ctx.healedAt = Date.now();
    },
  },
  {
    key: 'slow-client',
    name: '9. A slow client (never reads) is cut off with 1013 and catches up by sync',
    // FAULTS_SLOW_LIMIT=1073741824 lifts the limit: then both checks below fail (the control that shows they can).
    cluster: { wsEnv: [{ MAX_BUFFERED_BYTES: process.env.FAULTS_SLOW_LIMIT ?? String(256 * 1024) }, {}] },
    async inject(ctx) {
      const { cluster, load } = ctx;
      const sockets: WebSocket[] = [];
      // No client-side liveness checks: only the server may cut this connection.
      const slow = load.addConn(`${load.users[0]}-slow`, 0, { pingIntervalMs: 0, requestTimeoutMs: 120_000, onSocket: (ws) => sockets.push(ws) });
      const flooders = [0, 1, 2, 3].map((i) => load.addConn(`${load.users[0]}-flood${i}`, i));
      await load.ready(10_000);
      ctx.check('the slow client is on ws-1 (the instance with the 256 KiB limit)', slow.client.instanceId === 'ws-1', `on ${slow.client.instanceId}`);
      // Stop reading: the server's send buffer for this socket can only grow.
      sockets.at(-1)?.pause();
      ctx.faultAt = Date.now();
      const ws1 = cluster.ws[0];
      if (!ws1) throw new Error('no ws-1');
      const closes1013 = async () => metricValue(await ws1.metrics(), 'server_closes_total', 'code="1013"');
      const before1013 = await closes1013();
      const memory = async () => {
        const text = await ws1.metrics();
        return { rss: ws1.rss(), heap: metricValue(text, 'nodejs_heap_size_used_bytes') };
      };
      const baseline = { ...(await memory()), heap: await ws1.heapAfterGc() };
      const socketsBefore = metricValue(await ws1.metrics(), 'sockets_open');
      const peak = { ...baseline };
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const m = await memory().catch(() => undefined);
          if (m) for (const k of ['rss', 'heap'] as const) peak[k] = Math.max(peak[k], m[k]);
          await sleep(100);
        }
      })();
      // 12 KB frames (3990 three-byte characters): the flood is far larger than the limit.
      const big = '€'.repeat(3990);
      const FLOOD = Number(process.env.FAULTS_FLOOD ?? 2400);
      /** how long the slow client goes on not reading after the flood */
      const STALL_MS = 5000;
      const sends: Promise<void>[] = [];
      for (let i = 0; i < FLOOD; i++) sends.push(load.send(flooders[i % flooders.length] as Conn, slow.user, `${i} ${big}`));
      await Promise.all(sends);
      // What stays in the heap once the flood is over, while the client still does not read: what the
      // instance keeps for it, measured right after a full collection (over the inspector), so
      // garbage not collected yet does not count. The cut-off socket is still open (it has 30 s to
      // read its buffer and the close frame behind it); nothing was queued for it after the cut.
      const retained = await ws1.heapAfterGc();
      sampling = false;
      await sampler;
      const mb = (n: number) => (n / 2 ** 20).toFixed(1);
      const floodBytes = FLOOD * Buffer.byteLength(big);
      const cut = (await closes1013()) - before1013;
      ctx.check('the slow client was closed with 1013 once its buffer passed the limit', cut >= 1, `server_closes_total{code="1013"} +${cut} on ws-1`);
      const growth = retained - baseline.heap;
      // After a full collection, unbounded buffering keeps most of the flood (+21 MB measured with the
      // limit lifted, FAULTS_SLOW_LIMIT=1000000000), a bounded instance next to nothing (+0.6 MB).
      ctx.check('the instance memory stayed bounded', baseline.heap > 0 && growth < floodBytes / 2, `heap retained after the flood +${mb(growth)} MB while ${mb(floodBytes)} MB were addressed to the slow client (limit 256 KiB)`);
      ctx.notes.push(`ws-1 memory during the flood: rss ${mb(baseline.rss)} -> peak ${mb(peak.rss)} MB, heap used ${mb(baseline.heap)} -> peak ${mb(peak.heap)} MB -> ${mb(retained)} MB after`);
      // A client that stalls for longer than a moment (a phone in a tunnel) and then reads again gets
      // what was buffered, then the close frame: 1013, not a dropped connection.
      await sleep(STALL_MS);
      sockets.at(-1)?.resume();
      await ctx.waitCheck('the slow client reconnected', () => slow.client.state === 'ready' && slow.registrations.length > 1, 15_000);
      const codes = slow.closeCodes.map((c) => c.code);
      ctx.check('the slow client read the close code 1013 once it read again', codes[0] === 1013, `close codes seen: ${codes.join(', ') || 'none'}`);
      // The close handshake done, the socket goes at once rather than at the end of its grace time.
      await ctx.waitCheck('the cut-off socket is gone from ws-1', async () => metricValue(await ws1.metrics(), 'sockets_open') <= socketsBefore, 10_000);
      ctx.healedAt = Date.now();
    },
  },
  {
    key: 'poison',
    name: '10. A poison message in the queue is dead-lettered',
    async inject(ctx) {
      const { cluster, load } = ctx;
      const t = topology(cluster.queuePrefix);
      const conn = await amqp.connect(ctx.infra.rabbit.url);
      const ch = await conn.createConfirmChannel();
      const now = Date.now();
      const to = load.users[1] as string;
      const msg = (id: string, body: string): Envelope => ({ msgId: id, clientId: `inj-${id}`, from: 'injector', conversation: directConversation('injector', to), seq: 0, body, ts: now });
      // NUL is valid JSON and passes the queue schema, but Postgres text cannot hold it (SQLSTATE 22P05).
      const valid = [msg(`inj-valid-a-${cluster.tag}`, 'valid before the poison'), msg(`inj-valid-b-${cluster.tag}`, 'valid after the poison')];
      const poison = [msg(`inj-poison-a-${cluster.tag}`, 'bad \u0000 body'), msg(`inj-poison-b-${cluster.tag}`, '\u0000')];
      const publish = (content: Buffer) =>
        new Promise<void>((resolve, reject) => ch.publish(t.exchange, partitionRoutingKey(0), content, { persistent: true }, (err) => (err ? reject(err) : resolve())));
      await publish(encodePayload([poison[0] as Envelope]));
      await publish(encodePayload([valid[0] as Envelope, poison[1] as Envelope, valid[1] as Envelope]));
      await publish(Buffer.from('{"not": "a batch"'));
      for (const v of valid) ctx.extra.push({ msgId: v.msgId, sender: v.from, clientId: v.clientId, to, body: v.body, ackedAt: now, firstSentAt: now });
      const letters: { reason: string; body: string }[] = [];
      await ctx.waitCheck(
        'the poison went to the dead-letter queue',
        async () => {
          const m = await ch.get(t.deadLetterQueue, { noAck: true });
          if (m) letters.push({ reason: String(m.properties.headers?.['x-reason'] ?? ''), body: m.content.toString() });
          return letters.length >= 3;
        },
        15_000,
      );
      const withReason = letters.filter((l) => /SQLSTATE 22/.test(l.reason) && /inj-poison-/.test(l.body)).length;
      ctx.check('each poison row was dead-lettered with its reason', withReason === 2, `${letters.length} dead letters: ${letters.map((l) => l.reason.slice(0, 60)).join(' | ')}`);
      ctx.check('the unreadable payload was dead-lettered with its reason', letters.some((l) => /not valid JSON/.test(l.reason)), '');
      await conn.close();
      ctx.healedAt = Date.now();
    },
  },
  {
    key: 'redis-full',
    name: '11. Redis full (maxmemory reached, noeviction) for 5 s',
    afterAcks: 120,
    async inject(ctx) {
      const admin = createClient({ url: ctx.infra.redis.url });
      admin.on('error', () => undefined);
      await admin.connect();
      let fullFrom = 0;
      let fullUntil = 0;
      try {
        // Below what it already holds: every write that needs memory fails with OOM; reads and deletes work.
        await admin.configSet({ maxmemory: '1', 'maxmemory-policy': 'noeviction' });
        fullFrom = Date.now();
        await sleep(5000);
      } finally {
        await admin.configSet('maxmemory', '0');
        fullUntil = Date.now();
        await admin.quit().catch(() => undefined);
      }
      ctx.notes.push(`Redis full for ${Math.round((fullUntil - fullFrom) / 100) / 10} s`);
      // A send made in the fault's first 100 ms may have had its reservation on the way already.
      const late = [...ctx.load.records.values()].filter((r) => r.ackedAt !== undefined && r.firstSentAt > fullFrom + 100 && r.ackedAt < fullUntil).length;
      ctx.check('no send made while Redis was full was acked', late === 0, `${late} sends first made during the fault were acked before it ended`);
      // The answer to a send refused at the very end may arrive just after it.
      const unavailable = unavailableBetween(ctx.load, fullFrom, fullUntil + 1000);
      ctx.check('sends while Redis was full were answered unavailable', unavailable > 0, `${unavailable} unavailable answers`);
      const texts = new Set(ctx.load.conns.flatMap((c) => [...c.unavailableTexts]));
      const saysFull = texts.has('idempotency store unavailable (Redis is full); retry with the same id');
      ctx.check('the answer says the idempotency store is full and to retry', saysFull, [...texts].map((t) => t.slice(0, 120)).join(' | '));
      const warned = ctx.cluster.ws.filter((n) => n.proc.tail(200).includes('Redis is full (maxmemory reached)')).length;
      ctx.check('each gateway logged what to do', warned === ctx.cluster.ws.length, `${warned} of ${ctx.cluster.ws.length} gateways logged it`);
      await ctx.waitCheck('claims match the connections again', () => claimsMatch(ctx.cluster, ctx.load), TIMINGS.LEASE_MS * 3);
      await ctx.waitCheck('each gateway logged that reservations work again', () => ctx.cluster.ws.every((n) => n.proc.tail(200).includes('Redis takes idempotency reservations again')), 5000);
      ctx.healedAt = Date.now();
    },
  },
];
