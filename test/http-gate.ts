/**
 * An HTTP pass-through to one of the services that can hold chosen calls,
 * either before they reach the service (`request`: as a slow link would, so
 * calls sent later can overtake them) or after the service answered
 * (`answer`: the work is done, its answer arrives late).
 */
import { createServer, type Server } from 'node:http';

export interface HttpGate {
  url: string;
  /** from now on, matching calls are held */
  hold(): void;
  /** calls held now */
  held(): number;
  /** calls that matched `holds` so far, held or not */
  matched(): number;
  /** lets every held call go on and stops holding */
  release(): void;
  close(): Promise<void>;
}

export async function startHttpGate(targetUrl: string, options: { at: 'request' | 'answer'; holds(method: string, path: string): boolean }): Promise<HttpGate> {
  let isHolding = false;
  let waiting: (() => void)[] = [];
  let matched = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const matches = options.holds(req.method ?? 'GET', req.url ?? '/');
      if (matches) matched++;
      const isHeld = () => isHolding && matches;
      const forward = () =>
        void (async () => {
          const upstream = await fetch(`${targetUrl}${req.url}`, {
            method: req.method,
            headers: { authorization: String(req.headers.authorization), 'content-type': 'application/json' },
            body: chunks.length > 0 ? Buffer.concat(chunks) : undefined,
          });
          const body = Buffer.from(await upstream.arrayBuffer());
          const answer = () => res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? 'application/json' }).end(body);
          if (options.at === 'answer' && isHeld()) waiting.push(answer);
          else answer();
        })().catch(() => res.destroy());
      if (options.at === 'request' && isHeld()) waiting.push(forward);
      else forward();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    hold() {
      isHolding = true;
    },
    held: () => waiting.length,
    matched: () => matched,
    release() {
      isHolding = false;
      const all = waiting;
      waiting = [];
      for (const go of all) go();
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
