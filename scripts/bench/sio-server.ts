/**
 * The comparison the benchmark runs beside SimpleChat: what a Node team would
 * write with Socket.IO and its Redis adapter. A child process per node; each
 * user's sockets join a room named after the user, and a send is emitted to
 * the recipient's room (through Redis pub/sub when the recipient is on the
 * other node) and answered to the sender at once. Nothing is stored, no
 * broker confirms anything, nobody is authenticated: the cheapest correct
 * cross-node chat Socket.IO offers. The frames are SimpleChat's JSON, carried
 * as the payload of one event (SIO_EVENT), so the load generator counts both
 * the same way.
 *
 * Rooms: a socket that connects with `room` in its query joins that room
 * (`socket.join(room)`); a send naming a `room` is emitted to it with
 * `socket.to(room).emit(...)` (every member socket on every node but the
 * sending one, through the Redis adapter) and acked at once.
 *
 *   sio-server.ts <redis url> <adapter key prefix>
 *
 * Prints nothing; tells the parent its port over IPC.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { SIO_EVENT } from './sio';

const [redisUrl, key] = process.argv.slice(2);

process.on('disconnect', () => process.exit(0));

async function main(): Promise<void> {
  if (!redisUrl || !key) throw new Error('usage: sio-server.ts <redis url> <adapter key prefix>');
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on('error', () => undefined);
  sub.on('error', () => undefined);
  await Promise.all([pub.connect(), sub.connect()]);
  const http = createServer();
  const io = new Server(http, { transports: ['websocket'], perMessageDeflate: false, serveClient: false, adapter: createAdapter(pub, sub, { key }) });
  let seq = 0;
  const node = process.pid.toString(36);
  io.on('connection', (socket) => {
    const userId = socket.handshake.query.userId;
    if (typeof userId !== 'string' || !userId) {
      socket.disconnect(true);
      return;
    }
    void socket.join(userId);
    const room = socket.handshake.query.room;
    if (typeof room === 'string' && room) void socket.join(room);
    socket.on(SIO_EVENT, (text: unknown) => {
      if (typeof text !== 'string') return;
      let f: { type?: unknown; id?: unknown; to?: unknown; room?: unknown; body?: unknown };
      try {
        f = JSON.parse(text) as typeof f;
      } catch {
        return;
      }
      if (f.type === 'send' && typeof f.room === 'string' && typeof f.id === 'string' && typeof f.body === 'string') {
        const msgId = `${node}.${(++seq).toString(36)}`;
        const ts = Date.now();
        socket.to(f.room).emit(SIO_EVENT, JSON.stringify({ type: 'message', msgId, from: userId, room: f.room, body: f.body, ts, seq }));
        socket.emit(SIO_EVENT, JSON.stringify({ type: 'ack', id: f.id, msgId, ts, seq }));
        return;
      }
      if (f.type !== 'send' || typeof f.to !== 'string' || typeof f.id !== 'string' || typeof f.body !== 'string') return;
      const msgId = `${node}.${(++seq).toString(36)}`;
      const ts = Date.now();
      io.to(f.to).emit(SIO_EVENT, JSON.stringify({ type: 'message', msgId, from: userId, to: f.to, body: f.body, ts }));
      socket.emit(SIO_EVENT, JSON.stringify({ type: 'ack', id: f.id, msgId, ts }));
    });
  });
  http.listen(0, '127.0.0.1', () => process.send?.({ port: (http.address() as AddressInfo).port }));
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : String(err));
  process.exit(1);
});
