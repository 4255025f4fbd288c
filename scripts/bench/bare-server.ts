/**
 * The building blocks alone, as a child process (one core's worth of server):
 *
 *   relay: a bare `ws` server; a socket connects to /?i=<n>, every text frame
 *          is parsed for its `to` index and sent on, unchanged, to socket <n>.
 *          No auth, no routing table beyond an array, no broker.
 *   http:  a bare node:http server that reads each POST body and answers {}.
 *
 * Prints nothing; tells the parent its port over IPC.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

const mode = process.argv[2];

function ready(port: number): void {
  process.send?.({ port });
}

process.on('disconnect', () => process.exit(0));

if (mode === 'relay') {
  const sockets: (WebSocket | undefined)[] = [];
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, clientTracking: false });
  wss.on('connection', (ws, req) => {
    const i = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('i'));
    if (!Number.isInteger(i) || i < 0 || i > 1_000_000) return ws.close(1008, 'i');
    sockets[i] = ws;
    ws.on('error', () => undefined);
    ws.on('close', () => {
      if (sockets[i] === ws) sockets[i] = undefined;
    });
    ws.on('message', (data, isBinary) => {
      let to: unknown;
      try {
        to = (JSON.parse(data.toString()) as { to?: unknown }).to;
      } catch {
        return;
      }
      if (typeof to === 'number') sockets[to]?.send(data, { binary: isBinary });
    });
  });
  wss.on('listening', () => ready((wss.address() as AddressInfo).port));
} else if (mode === 'http') {
  const server = createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    req.on('data', () => undefined);
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '2' });
      res.end('{}');
    });
  });
  server.listen(0, '127.0.0.1', () => ready((server.address() as AddressInfo).port));
} else {
  process.stderr.write(`bare-server: unknown mode ${mode}\n`);
  process.exit(2);
}
