/**
 * Steady traffic from many users through the project's own resilient client
 * (@simplechat/client, on ws): every sender keeps its unacked messages and
 * resends them with the same id, every receiver reconnects and syncs from its
 * saved cursor. Everything the books need is recorded here: each send (first
 * attempt, ack time, every msgId any ack carried), and per connection (one
 * ChatClient, which may reconnect many times) each msgId it saw and when.
 * Receivers also act as readers: the client sends `delivered` as messages
 * arrive, and now and then a connection marks one of its conversations read,
 * so that marks move while the fault happens (the unread books check them).
 */
import WebSocket from 'ws';
import { createChatClient, type ChatClient, type ChatClientOptions as ClientOptions, type ConversationRef, type WireMessage } from '@simplechat/client';

/** The client's options on ws (onSocket gets ws sockets). */
export type ChatClientOptions = ClientOptions<typeof WebSocket>;

export interface SendRecord {
  sender: string;
  id: string;
  /** the recipient, or '#' and the room */
  to: string;
  body: string;
  firstSentAt: number;
  ackedAt?: number;
  msgId?: string;
  /** the position the first ack gave */
  seq?: number;
  /** every msgId an ack for this (sender, id) carried: more than one is a second message */
  ackMsgIds: Set<string>;
  /** instance of the sending connection and of each recipient connection when first sent */
  senderInstance?: string;
  recipientInstances: Map<string, string | undefined>;
  /** on the books (false for sends abandoned on purpose) */
  counted: boolean;
  /** the connection it was sent on */
  connKey: string;
}

export interface Conn {
  key: string;
  user: string;
  client: ChatClient;
  /** the conversations it got messages in (what it may mark read) */
  conversations: Map<string, ConversationRef>;
  /** msgId -> first time seen (live, by sync, or as the sender's own ack) */
  seen: Map<string, { at: number; source: 'live' | 'sync' | 'ack' }>;
  closeCodes: { code: number; at: number; instance: string | undefined }[];
  hintsAt: number[];
  unavailableAt: number[];
  /** the distinct texts of those answers */
  unavailableTexts: Set<string>;
  /** send id -> last time the server answered it (ack or error) on this connection */
  answers: Map<string, number>;
  registrations: { at: number; instanceId: string }[];
}

export interface LoadOptions {
  urls: string[];
  users: number;
  /** the first `multi` users get a second connection, on the other instance */
  multi: number;
  token(userId: string): Promise<string>;
  ratePerSec: number;
  maxInFlightPerConn: number;
  /** the share of sends that go to the room set with setRoom (default 0.25) */
  roomShare?: number;
  prefix: string;
  /** conversations marked read per second (default a quarter of ratePerSec) */
  readsPerSec?: number;
  clientOptions?: Partial<ChatClientOptions>;
  bodyPad?: number;
}

export interface Load {
  users: string[];
  conns: Conn[];
  records: Map<string, SendRecord>;
  /** from now on, a share of the sends go to this room, whose members are these users */
  setRoom(room: string, members: string[]): void;
  /** adds a connection of a user (before or during the load) */
  addConn(user: string, startAt: number, extra?: Partial<ChatClientOptions>): Conn;
  connsOf(user: string): Conn[];
  /** resolves once every connection is registered */
  ready(timeoutMs: number): Promise<void>;
  start(): void;
  /** stops creating new messages (pending ones keep being resent) */
  stop(): void;
  /** one send through conn, recorded on the books; `to` a user, or '#' and a room */
  send(conn: Conn, to: string, body?: string, id?: string): Promise<void>;
  pending(): number;
  close(): Promise<void>;
}

export function createLoad(options: LoadOptions): Load {
  const users = Array.from({ length: options.users }, (_, i) => `${options.prefix}u${String(i).padStart(2, '0')}`);
  const conns: Conn[] = [];
  const records = new Map<string, SendRecord>();
  let timer: NodeJS.Timeout | undefined;
  let n = 0;
  const pad = 'x'.repeat(options.bodyPad ?? 0);

  function addConn(user: string, startAt: number, extra: Partial<ChatClientOptions> = {}): Conn {
    const urls = options.urls.map((_, i) => options.urls[(startAt + i) % options.urls.length] as string);
    const key = `${user}#${conns.filter((c) => c.user === user).length}`;
    const client = createChatClient({
      WebSocket,
      urls,
      getToken: () => options.token(user),
      minBackoffMs: 100,
      maxBackoffMs: 1000,
      requestTimeoutMs: 5000,
      ackTimeoutMs: 8000,
      pingIntervalMs: 1000,
      ...options.clientOptions,
      ...extra,
    });
    const conn: Conn = { key, user, client, conversations: new Map(), seen: new Map(), closeCodes: [], hintsAt: [], unavailableAt: [], unavailableTexts: new Set(), answers: new Map(), registrations: [] };
    const see = (m: { msgId: string }, source: 'live' | 'sync' | 'ack') => {
      if (!conn.seen.has(m.msgId)) conn.seen.set(m.msgId, { at: Date.now(), source });
    };
    client.on('message', (m: WireMessage, source) => {
      see(m, source);
      const ref = m.room !== undefined ? { room: m.room } : { with: m.from === user ? (m.to as string) : m.from };
      conn.conversations.set('room' in ref ? `#${ref.room}` : ref.with, ref);
    });
    client.on('ack', (a) => see(a, 'ack'));
    client.on('registered', (r) => conn.registrations.push({ at: Date.now(), instanceId: r.instanceId }));
    client.on('disconnected', (d) => conn.closeCodes.push({ code: d.code, at: Date.now(), instance: conn.registrations.at(-1)?.instanceId }));
    client.on('inbound', (f) => {
      if ((f.type === 'ack' || f.type === 'error') && typeof f.id === 'string') conn.answers.set(f.id, Date.now());
      if (f.type === 'sync.hint') conn.hintsAt.push(Date.now());
      else if (f.type === 'error' && f.code === 'unavailable') {
        conn.unavailableAt.push(Date.now());
        conn.unavailableTexts.add(String(f.message));
      }
      else if (f.type === 'ack' && typeof f.id === 'string' && typeof f.msgId === 'string') records.get(`${user}|${f.id}`)?.ackMsgIds.add(f.msgId);
    });
    conns.push(conn);
    return conn;
  }

  users.forEach((u, i) => addConn(u, i));
  users.slice(0, options.multi).forEach((u, i) => addConn(u, i + 1));

  let room: { id: string; members: Set<string> } | undefined;
  /** the connections a message to this target reaches: a user's, or every member's of a room */
  const connsOf = (target: string) => (target.startsWith('#') && room && target.slice(1) === room.id ? conns.filter((c) => room?.members.has(c.user)) : conns.filter((c) => c.user === target));

  function send(conn: Conn, to: string, body?: string, id?: string): Promise<void> {
    const seq = ++n;
    const text = body ?? `${options.prefix}${conn.user}>${to} #${seq} ${pad}`;
    const clientId = id ?? `${options.prefix}${seq}`;
    const key = `${conn.user}|${clientId}`;
    let rec = records.get(key);
    if (!rec) {
      rec = {
        sender: conn.user,
        id: clientId,
        to,
        body: text,
        firstSentAt: Date.now(),
        ackMsgIds: new Set(),
        senderInstance: conn.client.state === 'ready' ? conn.client.instanceId : undefined,
        recipientInstances: new Map(connsOf(to).map((c) => [c.key, c.client.state === 'ready' ? c.client.instanceId : undefined])),
        counted: true,
        connKey: conn.key,
      };
      records.set(key, rec);
    }
    const r = rec;
    return conn.client.send(to.startsWith('#') ? { room: to.slice(1) } : to, r.body, { id: clientId }).then(
      (ack) => {
        r.ackedAt ??= Date.now();
        r.msgId ??= ack.msgId;
        r.seq ??= ack.seq;
        r.ackMsgIds.add(ack.msgId);
      },
      () => undefined, // closed at the end, or refused: never acked, so not on the books
    );
  }

  /** Some connection marks one of its conversations read (about readsPerSec in all). */
  function read(): void {
    const perTick = (options.readsPerSec ?? options.ratePerSec / 4) / 20;
    if (Math.random() >= perTick) return;
    const conn = conns[Math.floor(Math.random() * conns.length)] as Conn;
    const refs = [...conn.conversations.values()];
    const ref = refs[Math.floor(Math.random() * refs.length)];
    if (ref) conn.client.markRead(ref);
  }

  function tick(): void {
    read();
    // Bernoulli per tick at the configured rate; senders with too much in flight skip a turn.
    const perTick = options.ratePerSec / 20;
    let budget = Math.floor(perTick) + (Math.random() < perTick % 1 ? 1 : 0);
    let tries = 0;
    while (budget > 0 && tries++ < 50) {
      const conn = conns[Math.floor(Math.random() * conns.length)] as Conn;
      if (!users.includes(conn.user) || conn.client.pending() >= options.maxInFlightPerConn) continue;
      // mostly to others; now and then to oneself (every other connection of the sender gets it too), or to the room
      const draw = Math.random();
      const to = room?.members.has(conn.user) && draw < (options.roomShare ?? 0.25) ? `#${room.id}` : draw > 0.95 ? conn.user : (users[Math.floor(Math.random() * users.length)] as string);
      void send(conn, to);
      budget--;
    }
  }

  return {
    users,
    conns,
    records,
    addConn,
    connsOf,
    setRoom(id, members) {
      room = { id, members: new Set(members) };
    },
    ready(timeoutMs) {
      return new Promise((resolve, reject) => {
        const started = Date.now();
        const check = setInterval(() => {
          const notReady = conns.filter((c) => c.client.state !== 'ready');
          if (notReady.length === 0) {
            clearInterval(check);
            resolve();
          } else if (Date.now() - started > timeoutMs) {
            clearInterval(check);
            reject(new Error(`${notReady.length} connections not registered after ${timeoutMs} ms: ${notReady.map((c) => `${c.key}:${c.client.state}`).join(', ')}`));
          }
        }, 50);
      });
    },
    start() {
      timer ??= setInterval(tick, 50);
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
    },
    send,
    pending: () => conns.reduce((s, c) => s + c.client.pending(), 0),
    async close() {
      if (timer) clearInterval(timer);
      timer = undefined;
      await Promise.all(conns.map((c) => c.client.close()));
    },
  };
}
