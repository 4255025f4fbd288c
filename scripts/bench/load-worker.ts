/**
 * Load generator, run as a child process (one or two of them) so the client
 * does not share an event loop with the coordinator and has a pid of its own
 * to measure. Driven over IPC (rpc.ts):
 *
 * - connect: opens and registers connections with the project's ProtocolSocket
 *   (bounded open and register), plain `ws` sockets for the bare relay, or
 *   socket.io-client sockets for the Socket.IO comparison (sio-server.ts),
 *   which carry the same JSON frames as one event.
 * - run: sends ~100-character messages at a paced rate between the
 *   connections of this worker (cross-instance or same-instance pairs), and
 *   counts acks, deliveries, losses, duplicates and both latencies. Sender and
 *   recipient of every message live in this process, so a send time in the
 *   body (performance.now()) gives the delivery latency on one clock.
 * - relay: a closed loop over plain sockets through the bare ws relay.
 * - run with `receipts`: every connection that receives a message answers it
 *   with a `receipt` of each kind named (upTo = the message's position), as a
 *   client that marks what it got and showed; their pushes back to the sender
 *   and refusals are counted apart from the messages' own.
 * - presenceWatch / presenceArm / presenceStatus / presenceCollect: watcher
 *   connections watch a spread of target users, then record, per (watcher,
 *   user) pair, the epoch time the state they wait for (offline after a
 *   gateway is killed or drained, online after the targets reconnect) first
 *   arrived, and how many frames carried it.
 * - roomListen / roomSend / roomCollect: one member of a room sends into it at
 *   a paced rate while every member connection (in this worker and the other)
 *   counts what it receives, per connection; the coordinator hands the acked
 *   messages to every worker, which counts the member connections that missed
 *   one. Members live in two processes, so the send time in the body is
 *   epoch time (performance.timeOrigin + performance.now(), one host clock).
 *
 * The hot path uses the socket of ProtocolSocket directly (its frame log and
 * waiter scan are meant for tests, not for a million frames): each frame is
 * parsed once and counted into preallocated arrays.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import WebSocket from 'ws';
import { SignJWT } from 'jose';
import { io as sioConnect, type Socket as SioSocket } from 'socket.io-client';
import { ProtocolSocket } from '../../shared/src/client';
import type { ReceiptKind } from '../../shared/src/wire';
import { Histogram, type HistogramData } from './histogram';
import { serveRpc } from './rpc';
import { SIO_EVENT } from './sio';

/** What the hot paths need of a connection: text frames out and in. */
interface Link {
  isOpen(): boolean;
  send(text: string): void;
  /** replaces the frame handler */
  onText(handler: (text: string) => void): void;
  /** closes; resolves once closed or after timeoutMs */
  close(timeoutMs: number): Promise<void>;
}

interface Conn {
  userId: string;
  link: Link;
}

function wsLink(ws: WebSocket): Link {
  return {
    isOpen: () => ws.readyState === WebSocket.OPEN,
    send: (text) => ws.send(text),
    onText(handler) {
      ws.removeAllListeners('message');
      ws.on('message', (data: WebSocket.RawData) => handler(data.toString()));
    },
    close: (timeoutMs) =>
      new Promise<void>((resolve) => {
        if (ws.readyState === WebSocket.CLOSED) return resolve();
        const timer = setTimeout(() => {
          ws.terminate();
          resolve();
        }, timeoutMs);
        ws.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
        ws.close();
      }),
  };
}

function sioLink(socket: SioSocket): Link {
  return {
    isOpen: () => socket.connected,
    send: (text) => void socket.emit(SIO_EVENT, text),
    onText(handler) {
      socket.off(SIO_EVENT);
      socket.on(SIO_EVENT, handler);
    },
    close: async () => {
      socket.disconnect();
    },
  };
}

export interface ConnectArgs {
  group: string;
  kind: 'simplechat' | 'plain' | 'socketio';
  /** one entry per connection */
  /** `room`: a Socket.IO socket joins that room on connecting (sio-server.ts) */
  targets: { user: string; url: string; room?: string }[];
  jwtSecret?: string;
  concurrency: number;
  timeoutMs: number;
}

export interface ConnectResult {
  ok: number;
  failed: number;
  ms: number;
  firstError?: string;
}

export interface RunArgs {
  group: string;
  step: number;
  mode: 'cross' | 'same';
  /** instances on each side: connection i of a side is on that side's instance i mod perSide */
  perSide: number;
  ratePerSec: number;
  durationMs: number;
  drainMs: number;
  bodyChars: number;
  /** receipts each receiving connection sends for every message it gets, in this order (none when absent) */
  receipts?: ReceiptKind[];
}

export interface RunResult {
  planned: number;
  sent: number;
  acked: number;
  errors: Record<string, number>;
  /** the first message text per error code */
  errorSamples: Record<string, string>;
  noAnswer: number;
  delivered: number;
  lost: number;
  duplicated: number;
  late: number;
  hints: number;
  closed: Record<string, number>;
  ack: HistogramData;
  delivery: HistogramData;
  /** deliveries of messages sent SETTLE_MS or more after the step began */
  deliverySettled: HistogramData;
  /** ms from the first send */
  sendMs: number;
  lastAckMs: number;
  lastDeliveryMs: number;
  loopDelayP99Ms: number;
  /** deliveries slower than SLOW_DELIVERY_MS, by second of the step they arrived in: whether the tail is spread out or a few stalls */
  slowBySecond: number[];
  /** receipts sent (RunArgs.receipts) */
  receiptsSent: number;
  /** receipt frames pushed to the connections (the senders of the messages marked) */
  receiptPushes: number;
  /** receipts refused, by error code (errors whose id is a receipt's) */
  receiptErrors: Record<string, number>;
  receiptErrorSamples: Record<string, string>;
  /** messages that did not come in position order from their sender (a receipt naming their position may claim a hole) */
  outOfOrder: number;
}

export const SLOW_DELIVERY_MS = 50;
export const SETTLE_MS = 1000;
/** ids of receipts start with this (no message id does: those are base-36 step tags): their errors are told apart */
const RECEIPT_ID = '~r';

export interface RelayArgs {
  group: string;
  window: number;
  warmupMs: number;
  durationMs: number;
  bodyChars: number;
}

const groups = new Map<string, Conn[]>();
const closes: Record<string, number> = {};

function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      onTimeout();
      reject(new Error(`${what}: no answer within ${ms} ms`));
    }, ms);
    p.then(
      (v) => (clearTimeout(timer), resolve(v)),
      (e: unknown) => (clearTimeout(timer), reject(e instanceof Error ? e : new Error(String(e)))),
    );
  });
}

async function pool<T>(items: readonly T[], concurrency: number, task: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await task(items[i] as T, i);
    }
  });
  await Promise.all(lanes);
}

async function connect(args: ConnectArgs): Promise<ConnectResult> {
  const started = performance.now();
  const key = args.jwtSecret ? new TextEncoder().encode(args.jwtSecret) : undefined;
  const exp = Math.floor(Date.now() / 1000) + 4 * 3600;
  const conns: Conn[] = new Array(args.targets.length);
  let failed = 0;
  let firstError: string | undefined;
  await pool(args.targets, args.concurrency, async (t, i) => {
    try {
      if (args.kind === 'socketio') {
        const socket = sioConnect(t.url, { transports: ['websocket'], query: { userId: t.user, ...(t.room ? { room: t.room } : {}) }, reconnection: false, forceNew: true, timeout: args.timeoutMs });
        await withTimeout(
          new Promise<void>((resolve, reject) => {
            socket.once('connect', () => resolve());
            socket.once('connect_error', reject);
          }),
          args.timeoutMs,
          'open',
          () => socket.disconnect(),
        );
        socket.on('disconnect', (reason) => (closes[reason] = (closes[reason] ?? 0) + 1));
        conns[i] = { userId: t.user, link: sioLink(socket) };
        return;
      }
      let ws: WebSocket;
      if (args.kind === 'plain') {
        ws = new WebSocket(t.url, { perMessageDeflate: false, handshakeTimeout: args.timeoutMs });
        await withTimeout(
          new Promise<void>((resolve, reject) => {
            ws.once('open', () => resolve());
            ws.once('error', reject);
          }),
          args.timeoutMs,
          'open',
          () => ws.terminate(),
        );
        ws.on('error', () => undefined);
      } else {
        if (!key) throw new Error('connect: jwtSecret is required for simplechat connections');
        const s = new ProtocolSocket(t.url, { timeoutMs: args.timeoutMs });
        await withTimeout(s.opened, args.timeoutMs, 'open', () => s.ws.terminate());
        const token = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject(t.user).setExpirationTime(exp).sign(key);
        const reg = await s.register(token);
        if (reg.type !== 'registered') {
          s.ws.terminate();
          throw new Error(`register refused: ${JSON.stringify(reg)}`);
        }
        // From here on frames go to the lean handler of `run` (see the file comment).
        s.ws.removeAllListeners('message');
        s.frames.length = 0;
        ws = s.ws;
      }
      ws.on('close', (code) => (closes[code] = (closes[code] ?? 0) + 1));
      conns[i] = { userId: t.user, link: wsLink(ws) };
    } catch (err) {
      failed++;
      firstError ??= err instanceof Error ? err.message : String(err);
    }
  });
  groups.set(
    args.group,
    conns.filter((c) => c !== undefined),
  );
  return { ok: args.targets.length - failed, failed, ms: performance.now() - started, ...(firstError ? { firstError } : {}) };
}

async function closeGroup(args: { group: string; timeoutMs: number }): Promise<{ closed: number }> {
  const conns = groups.get(args.group) ?? [];
  groups.delete(args.group);
  presenceGroups.delete(args.group);
  await Promise.all(conns.map((c) => c.link.close(args.timeoutMs)));
  return { closed: conns.length };
}

/** The body: `step:seq:sendTime:` padded with x to the message size. */
function padBody(prefix: string, chars: number): string {
  return prefix.length >= chars ? prefix : prefix + 'x'.repeat(chars - prefix.length);
}

async function run(args: RunArgs): Promise<RunResult> {
  const conns = groups.get(args.group);
  if (!conns || conns.length < 4) throw new Error(`run: group ${args.group} needs at least 4 connections`);
  // Layout (set by the coordinator): the first half on side A's instances, the second half on
  // side B's, connection i of a side on that side's instance i mod perSide.
  const n = conns.length >> 1;
  const k = args.perSide;
  if (!(k >= 1 && n % k === 0 && n > k)) throw new Error(`run: ${n} connections per side do not split over ${k} instances`);
  const total = Math.floor((args.ratePerSec * args.durationMs) / 1000);
  const sendAt = new Float64Array(total);
  const state = new Uint8Array(total); // 0 no answer, 1 acked, 2 error
  const got = new Uint8Array(total);
  const ackHist = new Histogram();
  const delHist = new Histogram();
  /** deliveries of messages sent after the step's first second: the rate held, without the jump from idle */
  const delSettledHist = new Histogram();
  const errors: Record<string, number> = {};
  const errorSamples: Record<string, string> = {};
  const closedBefore = { ...closes };
  let acked = 0;
  let errored = 0;
  let delivered = 0;
  let duplicated = 0;
  let late = 0;
  const slowBySecond: number[] = [];
  const listenedAt = performance.now();
  let hints = 0;
  let lastAck = 0;
  let lastDelivery = 0;
  const stepTag = args.step.toString(36);
  const kinds = args.receipts ?? [];
  let receiptsSent = 0;
  let receiptPushes = 0;
  let outOfOrder = 0;
  const receiptErrors: Record<string, number> = {};
  const receiptErrorSamples: Record<string, string> = {};
  const receiptErrorCount = () => Object.values(receiptErrors).reduce((a, b) => a + b, 0);
  /** per receiving connection: the position of the last message from each sender this step */
  const lastSeq = conns.map(() => new Map<string, number>());

  const seqOf = (id: unknown): number | undefined => {
    if (typeof id !== 'string') return undefined;
    const dot = id.indexOf('.');
    if (dot < 0 || id.slice(0, dot) !== stepTag) return undefined;
    const seq = parseInt(id.slice(dot + 1), 36);
    return seq >= 0 && seq < total ? seq : undefined;
  };

  const onFrame = (text: string, conn: Conn, at: number) => {
    const t = performance.now();
    let f: { type?: unknown; id?: unknown; body?: unknown; code?: unknown; message?: unknown; from?: unknown; seq?: unknown };
    try {
      f = JSON.parse(text) as typeof f;
    } catch {
      return;
    }
    switch (f.type) {
      case 'ack': {
        const seq = seqOf(f.id);
        if (seq === undefined || state[seq] !== 0) return void late++;
        state[seq] = 1;
        acked++;
        ackHist.record(t - (sendAt[seq] as number));
        lastAck = t;
        return;
      }
      case 'message': {
        const body = typeof f.body === 'string' ? f.body : '';
        const a = body.indexOf(':');
        const b = body.indexOf(':', a + 1);
        const c = body.indexOf(':', b + 1);
        if (a < 0 || b < 0 || c < 0 || body.slice(0, a) !== stepTag) return void late++;
        const seq = Number(body.slice(a + 1, b));
        if (!(seq >= 0 && seq < total)) return void late++;
        if (kinds.length && typeof f.from === 'string' && typeof f.seq === 'number') {
          const last = (lastSeq[at] as Map<string, number>).get(f.from);
          if (last !== undefined && f.seq !== last + 1) outOfOrder++;
          (lastSeq[at] as Map<string, number>).set(f.from, f.seq);
          for (const kind of kinds) conn.link.send(`{"type":"receipt","id":"${RECEIPT_ID}${kind[0]}","kind":"${kind}","with":"${f.from}","upTo":${f.seq}}`);
          receiptsSent += kinds.length;
        }
        if (got[seq] === 255) return void duplicated++;
        got[seq] = (got[seq] as number) + 1;
        if (got[seq] === 1) {
          delivered++;
          const sentAt = Number(body.slice(b + 1, c));
          const ms = t - sentAt;
          delHist.record(ms);
          if (sentAt - listenedAt >= SETTLE_MS) delSettledHist.record(ms);
          if (ms > SLOW_DELIVERY_MS) {
            const sec = Math.max(0, Math.floor((t - listenedAt) / 1000));
            while (slowBySecond.length <= sec) slowBySecond.push(0);
            slowBySecond[sec] = (slowBySecond[sec] as number) + 1;
          }
          lastDelivery = t;
        } else duplicated++;
        return;
      }
      case 'error': {
        const code = typeof f.code === 'string' ? f.code : 'unknown';
        if (typeof f.id === 'string' && f.id.startsWith(RECEIPT_ID)) {
          receiptErrors[code] = (receiptErrors[code] ?? 0) + 1;
          if (receiptErrorSamples[code] === undefined) receiptErrorSamples[code] = String(f.message).slice(0, 300);
          return;
        }
        errors[code] = (errors[code] ?? 0) + 1;
        if (errorSamples[code] === undefined) errorSamples[code] = String(f.message).slice(0, 300);
        const seq = seqOf(f.id);
        if (seq !== undefined && state[seq] === 0) {
          state[seq] = 2;
          errored++;
        }
        return;
      }
      case 'sync.hint':
        hints++;
        return;
      case 'receipt':
        receiptPushes++;
        return;
      default:
        return;
    }
  };
  conns.forEach((c, i) => c.link.onText((text) => onFrame(text, c, i)));

  const sender = (k: number): number => {
    const i = k % (2 * n);
    return i % 2 === 0 ? i / 2 : n + (i - 1) / 2;
  };
  const target = (s: number): number => {
    // cross: to the other side; same: k further on the same side, i.e. the same instance
    if (args.mode === 'cross') return s < n ? n + ((s + 1) % n) : (s - n + 1) % n;
    return s < n ? (s + k) % n : n + ((s - n + k) % n);
  };

  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const start = performance.now();
  let sent = 0;
  // Catch up at most 50 ms worth per tick: a stalled client must not turn into one huge burst.
  const maxPerTick = Math.max(1, Math.ceil(args.ratePerSec / 20));
  // Every wake-up costs CPU on the machine under test (more than a send on a VM): at low rates tick
  // less often. Each message still carries its own send time, so latency is measured exactly.
  const tickMs = args.ratePerSec >= 2000 ? 1 : args.ratePerSec >= 500 ? 2 : 5;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - start) * args.ratePerSec) / 1000));
      const until = Math.min(due, sent + maxPerTick);
      while (sent < until) {
        const seq = sent++;
        const s = sender(seq);
        const from = conns[s] as Conn;
        const to = (conns[target(s)] as Conn).userId;
        const t = performance.now();
        sendAt[seq] = t;
        const body = padBody(`${stepTag}:${seq}:${t.toFixed(3)}:`, args.bodyChars);
        if (from.link.isOpen()) from.link.send(`{"type":"send","id":"${stepTag}.${seq.toString(36)}","to":"${to}","body":"${body}"}`);
      }
      if (sent >= total) resolve();
      else setTimeout(tick, tickMs);
    };
    tick();
  });
  const sendDone = performance.now();
  const deadline = sendDone + args.drainMs;
  await new Promise<void>((resolve) => {
    const check = () => {
      // with receipts, also until each came back to its message's sender (a mark that moved is pushed)
      const settled = acked + errored === total && delivered >= acked && receiptPushes + receiptErrorCount() >= receiptsSent;
      if (settled || performance.now() >= deadline) resolve();
      else setTimeout(check, 10);
    };
    check();
  });
  loop.disable();
  let lost = 0;
  let noAnswer = 0;
  for (let i = 0; i < total; i++) {
    if (state[i] === 0) noAnswer++;
    else if (state[i] === 1 && got[i] === 0) lost++;
  }
  const closed: Record<string, number> = {};
  for (const [code, count] of Object.entries(closes)) if (count - (closedBefore[code] ?? 0) > 0) closed[code] = count - (closedBefore[code] ?? 0);
  return {
    planned: total,
    sent,
    acked,
    errors,
    errorSamples,
    noAnswer,
    delivered,
    lost,
    duplicated,
    late,
    hints,
    closed,
    ack: ackHist.toJSON(),
    delivery: delHist.toJSON(),
    deliverySettled: delSettledHist.toJSON(),
    sendMs: sendDone - start,
    lastAckMs: lastAck ? lastAck - start : 0,
    lastDeliveryMs: lastDelivery ? lastDelivery - start : 0,
    loopDelayP99Ms: loop.percentile(99) / 1e6,
    slowBySecond,
    receiptsSent,
    receiptPushes,
    receiptErrors,
    receiptErrorSamples,
    outOfOrder,
  };
}

/** Closed loop through the bare relay: each delivery sends the next frame on; `window` frames circulate. */
async function relay(args: RelayArgs): Promise<{ delivered: number; seconds: number; loopDelayP99Ms: number }> {
  const conns = groups.get(args.group);
  if (!conns || conns.length < 2) throw new Error(`relay: group ${args.group} needs at least 2 connections`);
  const body = 'x'.repeat(args.bodyChars);
  // the relay knows sockets by the index they connected with (their user field)
  const frames = conns.map((_, j) => `{"type":"send","to":${(conns[(j + 1) % conns.length] as Conn).userId},"body":"${body}"}`);
  let running = true;
  let counting = false;
  let delivered = 0;
  conns.forEach((c, j) => {
    c.link.onText(() => {
      if (counting) delivered++;
      if (running && c.link.isOpen()) c.link.send(frames[j] as string);
    });
  });
  const loop = monitorEventLoopDelay({ resolution: 5 });
  for (let k = 0; k < args.window; k++) {
    const j = k % conns.length;
    (conns[j] as Conn).link.send(frames[j] as string);
  }
  await new Promise((r) => setTimeout(r, args.warmupMs));
  loop.enable();
  counting = true;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, args.durationMs));
  counting = false;
  const seconds = (performance.now() - t0) / 1000;
  running = false;
  loop.disable();
  await new Promise((r) => setTimeout(r, 300));
  return { delivered, seconds, loopDelayP99Ms: loop.percentile(99) / 1e6 };
}


// ---- rooms ------------------------------------------------------------------

const epochNow = () => performance.timeOrigin + performance.now();

export interface RoomListenArgs {
  group: string;
  step: number;
  /** messages the step plans to send */
  total: number;
  /** this worker's connection that sends (it gets acks, not the messages), or -1 */
  senderIndex: number;
  /** messages with a seq from here on were sent after the step's first second (SETTLE_MS) */
  settleSeq: number;
}

export interface RoomSendArgs {
  group: string;
  room: string;
  ratePerSec: number;
  durationMs: number;
  bodyChars: number;
  /** after the last send, how long to wait for the acks still missing */
  ackWaitMs: number;
}

export interface RoomSendResult {
  planned: number;
  sent: number;
  acked: number;
  errors: Record<string, number>;
  errorSamples: Record<string, string>;
  noAnswer: number;
  ack: HistogramData;
  /** ms from the first send */
  sendMs: number;
  lastAckMs: number;
  /** epoch ms of the first send */
  startEpoch: number;
  /** base64 of one byte per seq: 1 acked */
  ackedMap: string;
  loopDelayP99Ms: number;
}

export interface RoomCollectArgs {
  group: string;
  /** RoomSendResult.ackedMap */
  ackedMap: string;
  /** how long to wait for deliveries still missing */
  waitMs: number;
}

export interface RoomCollectResult {
  /** member connections here that should receive (the sender's excluded) */
  receivers: number;
  /** acked × receivers */
  expected: number;
  /** first receipts of acked messages, per connection */
  delivered: number;
  /** first receipts of messages never acked (an error answered them, or no answer) */
  unacked: number;
  lost: number;
  /** receivers that got none of the acked messages */
  silent: number;
  duplicated: number;
  /** messages echoed to the sending connection */
  echoed: number;
  late: number;
  hints: number;
  closed: Record<string, number>;
  delivery: HistogramData;
  deliverySettled: HistogramData;
  /** epoch ms of the last receipt */
  lastDeliveryEpoch: number;
  slowBySecond: number[];
  loopDelayP99Ms: number;
}

interface RoomStep {
  args: RoomListenArgs;
  tag: string;
  /** per connection: receipts per seq */
  got: Uint8Array[];
  /** receivers (sender excluded) that got each seq at least once */
  perSeq: Uint16Array;
  delivered: number;
  duplicated: number;
  echoed: number;
  late: number;
  hints: number;
  del: Histogram;
  settled: Histogram;
  lastDeliveryEpoch: number;
  listenedEpoch: number;
  slowBySecond: number[];
  closedBefore: Record<string, number>;
  loop: ReturnType<typeof monitorEventLoopDelay>;
  /** set while this worker sends */
  onAck?: (f: { type?: unknown; id?: unknown; code?: unknown; message?: unknown }, t: number) => void;
}

const roomSteps = new Map<string, RoomStep>();
const BODY_KEY = '"body":"';

async function roomListen(args: RoomListenArgs): Promise<{ connections: number }> {
  const conns = groups.get(args.group);
  if (!conns) throw new Error(`roomListen: no group ${args.group}`);
  const st: RoomStep = {
    args,
    tag: args.step.toString(36),
    got: conns.map(() => new Uint8Array(args.total)),
    perSeq: new Uint16Array(args.total),
    delivered: 0,
    duplicated: 0,
    echoed: 0,
    late: 0,
    hints: 0,
    del: new Histogram(),
    settled: new Histogram(),
    lastDeliveryEpoch: 0,
    listenedEpoch: epochNow(),
    slowBySecond: [],
    closedBefore: { ...closes },
    loop: monitorEventLoopDelay({ resolution: 5 }),
  };
  roomSteps.set(args.group, st);
  st.loop.enable();
  conns.forEach((c, i) => {
    const got = st.got[i] as Uint8Array;
    const isSender = i === args.senderIndex;
    c.link.onText((text) => {
      // Message frames are most of the traffic: read the body's prefix without parsing the frame.
      if (text.startsWith('{"type":"message"')) {
        const t = epochNow();
        const at = text.indexOf(BODY_KEY);
        if (at < 0) return void st.late++;
        const p = at + BODY_KEY.length;
        const a = text.indexOf(':', p);
        const b = text.indexOf(':', a + 1);
        const e = text.indexOf(':', b + 1);
        if (a < 0 || b < 0 || e < 0 || text.slice(p, a) !== st.tag) return void st.late++;
        const seq = Number(text.slice(a + 1, b));
        if (!(seq >= 0 && seq < args.total)) return void st.late++;
        if (isSender) return void st.echoed++;
        if (got[seq] !== 0) {
          if (got[seq] !== 255) got[seq] = (got[seq] as number) + 1;
          return void st.duplicated++;
        }
        got[seq] = 1;
        st.perSeq[seq] = (st.perSeq[seq] as number) + 1;
        st.delivered++;
        const ms = t - Number(text.slice(b + 1, e));
        st.del.record(ms);
        if (seq >= args.settleSeq) st.settled.record(ms);
        if (ms > SLOW_DELIVERY_MS) {
          const sec = Math.max(0, Math.floor((t - st.listenedEpoch) / 1000));
          while (st.slowBySecond.length <= sec) st.slowBySecond.push(0);
          st.slowBySecond[sec] = (st.slowBySecond[sec] as number) + 1;
        }
        st.lastDeliveryEpoch = t;
        return;
      }
      let f: { type?: unknown; id?: unknown; code?: unknown; message?: unknown };
      try {
        f = JSON.parse(text) as typeof f;
      } catch {
        return;
      }
      if (f.type === 'sync.hint') st.hints++;
      else if (isSender && (f.type === 'ack' || f.type === 'error')) st.onAck?.(f, performance.now());
    });
  });
  return { connections: conns.length };
}

async function roomSend(args: RoomSendArgs): Promise<RoomSendResult> {
  const st = roomSteps.get(args.group);
  const conns = groups.get(args.group);
  if (!st || !conns || st.args.senderIndex < 0) throw new Error(`roomSend: group ${args.group} does not listen with a sender here`);
  const from = conns[st.args.senderIndex] as Conn;
  const total = st.args.total;
  const tag = st.tag;
  const sendAt = new Float64Array(total);
  const state = new Uint8Array(total); // 0 no answer, 1 acked, 2 error
  const ackHist = new Histogram();
  const errors: Record<string, number> = {};
  const errorSamples: Record<string, string> = {};
  let acked = 0;
  let errored = 0;
  let lastAck = 0;
  const seqOf = (id: unknown): number | undefined => {
    if (typeof id !== 'string') return undefined;
    const dot = id.indexOf('.');
    if (dot < 0 || id.slice(0, dot) !== tag) return undefined;
    const seq = parseInt(id.slice(dot + 1), 36);
    return seq >= 0 && seq < total ? seq : undefined;
  };
  st.onAck = (f, t) => {
    const seq = seqOf(f.id);
    if (f.type === 'error') {
      const code = typeof f.code === 'string' ? f.code : 'unknown';
      errors[code] = (errors[code] ?? 0) + 1;
      if (errorSamples[code] === undefined) errorSamples[code] = String(f.message).slice(0, 300);
      if (seq !== undefined && state[seq] === 0) {
        state[seq] = 2;
        errored++;
      }
      return;
    }
    if (seq === undefined || state[seq] !== 0) return void st.late++;
    state[seq] = 1;
    acked++;
    ackHist.record(t - (sendAt[seq] as number));
    lastAck = t;
  };
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const start = performance.now();
  const startEpoch = epochNow();
  let sent = 0;
  const maxPerTick = Math.max(1, Math.ceil(args.ratePerSec / 20));
  const tickMs = args.ratePerSec >= 500 ? 2 : 5;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - start) * args.ratePerSec) / 1000));
      const until = Math.min(due, sent + maxPerTick);
      while (sent < until) {
        const seq = sent++;
        const t = performance.now();
        sendAt[seq] = t;
        const body = padBody(`${tag}:${seq}:${(performance.timeOrigin + t).toFixed(3)}:`, args.bodyChars);
        if (from.link.isOpen()) from.link.send(`{"type":"send","id":"${tag}.${seq.toString(36)}","room":"${args.room}","body":"${body}"}`);
      }
      if (sent >= total) resolve();
      else setTimeout(tick, tickMs);
    };
    tick();
  });
  const sendDone = performance.now();
  const deadline = sendDone + args.ackWaitMs;
  await new Promise<void>((resolve) => {
    const check = () => {
      if (acked + errored === total || performance.now() >= deadline) resolve();
      else setTimeout(check, 10);
    };
    check();
  });
  loop.disable();
  delete st.onAck;
  let noAnswer = 0;
  for (let i = 0; i < total; i++) if (state[i] === 0) noAnswer++;
  const ackedMap = new Uint8Array(total);
  for (let i = 0; i < total; i++) ackedMap[i] = state[i] === 1 ? 1 : 0;
  return {
    planned: total,
    sent,
    acked,
    errors,
    errorSamples,
    noAnswer,
    ack: ackHist.toJSON(),
    sendMs: sendDone - start,
    lastAckMs: lastAck ? lastAck - start : 0,
    startEpoch,
    ackedMap: Buffer.from(ackedMap).toString('base64'),
    loopDelayP99Ms: loop.percentile(99) / 1e6,
  };
}

async function roomCollect(args: RoomCollectArgs): Promise<RoomCollectResult> {
  const st = roomSteps.get(args.group);
  if (!st) throw new Error(`roomCollect: group ${args.group} does not listen`);
  const ackedMap = new Uint8Array(Buffer.from(args.ackedMap, 'base64'));
  const total = Math.min(ackedMap.length, st.args.total);
  const receivers = st.got.length - (st.args.senderIndex >= 0 ? 1 : 0);
  let acked = 0;
  for (let i = 0; i < total; i++) acked += ackedMap[i] as number;
  // Wait until every receiver has every acked message, or the time is up.
  let firstMissing = 0;
  const deadline = performance.now() + args.waitMs;
  await new Promise<void>((resolve) => {
    const check = () => {
      while (firstMissing < total && (ackedMap[firstMissing] === 0 || (st.perSeq[firstMissing] as number) >= receivers)) firstMissing++;
      if (firstMissing >= total || performance.now() >= deadline) resolve();
      else setTimeout(check, 20);
    };
    check();
  });
  st.loop.disable();
  let delivered = 0;
  let unacked = 0;
  let lost = 0;
  let silent = 0;
  st.got.forEach((got, i) => {
    if (i === st.args.senderIndex) return;
    let mine = 0;
    for (let seq = 0; seq < total; seq++) {
      if (ackedMap[seq] === 1) {
        if (got[seq] === 0) lost++;
        else mine++;
      } else if (got[seq] !== 0) unacked++;
    }
    delivered += mine;
    if (acked > 0 && mine === 0) silent++;
  });
  // Nothing more is counted for this step (frames of a later step go to its own handlers).
  roomSteps.delete(args.group);
  const closed: Record<string, number> = {};
  for (const [code, count] of Object.entries(closes)) if (count - (st.closedBefore[code] ?? 0) > 0) closed[code] = count - (st.closedBefore[code] ?? 0);
  return {
    receivers,
    expected: acked * receivers,
    delivered,
    unacked,
    lost,
    silent,
    duplicated: st.duplicated,
    echoed: st.echoed,
    late: st.late,
    hints: st.hints,
    closed,
    delivery: st.del.toJSON(),
    deliverySettled: st.settled.toJSON(),
    lastDeliveryEpoch: st.lastDeliveryEpoch,
    slowBySecond: st.slowBySecond,
    loopDelayP99Ms: st.loop.percentile(99) / 1e6,
  };
}

// ---- presence ---------------------------------------------------------------

export interface PresenceWatchArgs {
  group: string;
  /** every target user, in order */
  targets: string[];
  /** per connection of the group: the index in `targets` of the first user it watches */
  starts: number[];
  /** users each connection watches: targets[(start + k) mod targets.length] for k < perWatcher */
  perWatcher: number;
  /** users per presence.watch frame (at most PRESENCE_USERS_PER_FRAME) */
  perFrame: number;
  concurrency: number;
  timeoutMs: number;
}

export interface PresenceWatchResult {
  watchers: number;
  /** (watcher, user) pairs watched */
  pairs: number;
  /** pairs the answers said were online */
  online: number;
  /** presence.watch frames answered with a `presence` frame */
  answered: number;
  errors: Record<string, number>;
  errorSamples: Record<string, string>;
  /** ms from a presence.watch frame to its answer */
  answer: HistogramData;
  ms: number;
}

export interface PresenceArmArgs {
  group: string;
  /** the state every pair is waited for in */
  expect: 'online' | 'offline';
}

export interface PresenceStatus {
  pairs: number;
  /** pairs now in the state waited for */
  there: number;
}

export interface PresenceCollectArgs {
  group: string;
  /** epoch ms the delays are counted from (the kill, the signal, the first connect) */
  fromEpoch: number;
}

export interface PresenceCollectResult {
  pairs: number;
  /** pairs that reached the state waited for since armed */
  reached: number;
  /** pairs not in that state at the end */
  notThere: number;
  /** pairs already in it when armed (no change to wait for) */
  alreadyThere: number;
  /** pairs that reached it and left it again */
  flapped: number;
  /** ms from fromEpoch to each pair's first arrival in the state */
  delay: HistogramData;
  /** presence frames pushed to the watchers since armed, and the user states they carried */
  frames: number;
  changes: number;
  /** fewest and most frames one watcher got */
  framesMin: number;
  framesMax: number;
  closed: Record<string, number>;
  loopDelayP99Ms: number;
}

interface Watcher {
  users: readonly string[];
  index: ReadonlyMap<string, number>;
  /** per watched user: 1 online */
  online: Uint8Array;
  /** per watched user: epoch ms it first reached the state waited for, 0 not yet */
  reachedAt: Float64Array;
  frames: number;
}

interface PresenceGroup {
  watchers: Watcher[];
  /** the state waited for (1 online, 0 offline), undefined until armed */
  expect: number | undefined;
  changes: number;
  flapped: number;
  closedBefore: Record<string, number>;
  loop: ReturnType<typeof monitorEventLoopDelay>;
}

const presenceGroups = new Map<string, PresenceGroup>();

async function presenceWatch(args: PresenceWatchArgs): Promise<PresenceWatchResult> {
  const conns = groups.get(args.group);
  if (!conns || conns.length !== args.starts.length) throw new Error(`presenceWatch: group ${args.group} has ${conns?.length ?? 0} connections, ${args.starts.length} starts given`);
  const started = performance.now();
  const T = args.targets.length;
  const lists = new Map<number, { users: string[]; index: Map<string, number> }>();
  const pg: PresenceGroup = { watchers: [], expect: undefined, changes: 0, flapped: 0, closedBefore: { ...closes }, loop: monitorEventLoopDelay({ resolution: 5 }) };
  presenceGroups.set(args.group, pg);
  const answer = new Histogram();
  const errors: Record<string, number> = {};
  const errorSamples: Record<string, string> = {};
  let answered = 0;
  const waiting = new Map<string, (ok: boolean) => void>();
  conns.forEach((c, i) => {
    const start = args.starts[i] as number;
    let list = lists.get(start);
    if (!list) {
      const users = Array.from({ length: Math.min(args.perWatcher, T) }, (_, k) => args.targets[(start + k) % T] as string);
      list = { users, index: new Map(users.map((u, k) => [u, k])) };
      lists.set(start, list);
    }
    const w: Watcher = { users: list.users, index: list.index, online: new Uint8Array(list.users.length), reachedAt: new Float64Array(list.users.length), frames: 0 };
    pg.watchers.push(w);
    c.link.onText((text) => {
      const t = epochNow();
      let f: { type?: unknown; id?: unknown; users?: unknown; code?: unknown; message?: unknown };
      try {
        f = JSON.parse(text) as typeof f;
      } catch {
        return;
      }
      if (f.type === 'error' && typeof f.id === 'string') {
        const code = typeof f.code === 'string' ? f.code : 'unknown';
        errors[code] = (errors[code] ?? 0) + 1;
        errorSamples[code] ??= String(f.message).slice(0, 300);
        waiting.get(f.id)?.(false);
        return;
      }
      if (f.type !== 'presence' || typeof f.users !== 'object' || f.users === null) return;
      const pushed = typeof f.id !== 'string';
      if (pushed && pg.expect !== undefined) w.frames++;
      for (const [u, st] of Object.entries(f.users as Record<string, { online?: unknown }>)) {
        const k = w.index.get(u);
        if (k === undefined) continue;
        const on = st.online === true ? 1 : 0;
        if (pushed && pg.expect !== undefined) {
          pg.changes++;
          if (on === pg.expect && w.reachedAt[k] === 0) w.reachedAt[k] = t;
          else if (on !== pg.expect && w.reachedAt[k] !== 0) pg.flapped++;
        }
        w.online[k] = on;
      }
      if (!pushed) waiting.get(f.id as string)?.(true);
    });
  });
  const frames: { conn: number; id: string; users: string[] }[] = [];
  pg.watchers.forEach((w, i) => {
    for (let at = 0, n = 0; at < w.users.length; at += args.perFrame, n++) frames.push({ conn: i, id: `pw${i}.${n}`, users: w.users.slice(at, at + args.perFrame) as string[] });
  });
  await pool(frames, args.concurrency, async (fr) => {
    const t0 = performance.now();
    const ok = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), args.timeoutMs);
      waiting.set(fr.id, (v) => {
        clearTimeout(timer);
        resolve(v);
      });
      const link = (conns[fr.conn] as Conn).link;
      if (link.isOpen()) link.send(JSON.stringify({ type: 'presence.watch', id: fr.id, users: fr.users }));
    });
    waiting.delete(fr.id);
    if (!ok) return;
    answered++;
    answer.record(performance.now() - t0);
  });
  let online = 0;
  let pairs = 0;
  for (const w of pg.watchers) {
    pairs += w.users.length;
    for (const on of w.online) online += on;
  }
  return { watchers: pg.watchers.length, pairs, online, answered, errors, errorSamples, answer: answer.toJSON(), ms: performance.now() - started };
}

function presenceGroup(group: string): PresenceGroup {
  const pg = presenceGroups.get(group);
  if (!pg) throw new Error(`presence: group ${group} watches nothing`);
  return pg;
}

async function presenceArm(args: PresenceArmArgs): Promise<PresenceStatus> {
  const pg = presenceGroup(args.group);
  pg.expect = args.expect === 'online' ? 1 : 0;
  pg.changes = 0;
  pg.flapped = 0;
  pg.closedBefore = { ...closes };
  for (const w of pg.watchers) {
    w.reachedAt.fill(0);
    w.frames = 0;
  }
  pg.loop.reset();
  pg.loop.enable();
  return presenceStatus(args);
}

async function presenceStatus(args: { group: string }): Promise<PresenceStatus> {
  const pg = presenceGroup(args.group);
  let pairs = 0;
  let there = 0;
  for (const w of pg.watchers) {
    pairs += w.online.length;
    for (const on of w.online) if (on === pg.expect) there++;
  }
  return { pairs, there };
}

async function presenceCollect(args: PresenceCollectArgs): Promise<PresenceCollectResult> {
  const pg = presenceGroup(args.group);
  pg.loop.disable();
  const delay = new Histogram();
  let pairs = 0;
  let reached = 0;
  let notThere = 0;
  let alreadyThere = 0;
  let frames = 0;
  let framesMin = Infinity;
  let framesMax = 0;
  for (const w of pg.watchers) {
    frames += w.frames;
    framesMin = Math.min(framesMin, w.frames);
    framesMax = Math.max(framesMax, w.frames);
    w.reachedAt.forEach((at, k) => {
      pairs++;
      if (at > 0) {
        reached++;
        delay.record(at - args.fromEpoch);
      } else if (w.online[k] === pg.expect) alreadyThere++;
      if (w.online[k] !== pg.expect) notThere++;
    });
  }
  const closed: Record<string, number> = {};
  for (const [code, count] of Object.entries(closes)) if (count - (pg.closedBefore[code] ?? 0) > 0) closed[code] = count - (pg.closedBefore[code] ?? 0);
  return { pairs, reached, notThere, alreadyThere, flapped: pg.flapped, delay: delay.toJSON(), frames, changes: pg.changes, framesMin: Number.isFinite(framesMin) ? framesMin : 0, framesMax, closed, loopDelayP99Ms: pg.loop.percentile(99) / 1e6 };
}

serveRpc({
  connect: (a: ConnectArgs) => connect(a),
  closeGroup: (a: { group: string; timeoutMs: number }) => closeGroup(a),
  run: (a: RunArgs) => run(a),
  relay: (a: RelayArgs) => relay(a),
  roomListen: (a: RoomListenArgs) => roomListen(a),
  roomSend: (a: RoomSendArgs) => roomSend(a),
  roomCollect: (a: RoomCollectArgs) => roomCollect(a),
  presenceWatch: (a: PresenceWatchArgs) => presenceWatch(a),
  presenceArm: (a: PresenceArmArgs) => presenceArm(a),
  presenceStatus: (a: { group: string }) => presenceStatus(a),
  presenceCollect: (a: PresenceCollectArgs) => presenceCollect(a),
  ping: async () => ({ pid: process.pid }),
});
