/**
 * A real HTTP receiver of notification webhooks for tests (node:http): keeps
 * every request as received (raw body, headers, time) and answers what the
 * test's `respond` says. It can go away (connections refused) and come back
 * on the same port.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { MissedMessagesEvent } from '@simplechat/shared';

export interface ReceivedWebhook {
  raw: string;
  headers: IncomingHttpHeaders;
  event: MissedMessagesEvent;
  /** ms since the epoch */
  at: number;
  /** what the receiver answered */
  status: number;
}

export interface WebhookReceiver {
  readonly url: string;
  readonly received: ReceivedWebhook[];
  /** the status to answer; `attempt` counts this eventId's requests so far (0 for the first) */
  respond: (event: MissedMessagesEvent, attempt: number) => number;
  /** requests (answered or not) for one recipient */
  forRecipient(userId: string): ReceivedWebhook[];
  /** stops listening: connections are refused until start() */
  stop(): Promise<void>;
  start(): Promise<void>;
  close(): Promise<void>;
}

export async function startWebhookReceiver(): Promise<WebhookReceiver> {
  const received: ReceivedWebhook[] = [];
  let server: Server | undefined;
  let port = 0;

  function listen(): Promise<void> {
    const s = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const raw = Buffer.concat(chunks).toString('utf8');
        const event = JSON.parse(raw) as MissedMessagesEvent;
        const attempt = received.filter((r) => r.event.eventId === event.eventId).length;
        const status = receiver.respond(event, attempt);
        received.push({ raw, headers: req.headers, event, at: Date.now(), status });
        res.writeHead(status, { 'content-type': 'text/plain' }).end(String(status));
      });
    });
    server = s;
    return new Promise((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        port = (s.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  async function stop(): Promise<void> {
    const s = server;
    server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  await listen();
  const receiver: WebhookReceiver = {
    url: `http://127.0.0.1:${port}/hooks/simplechat`,
    received,
    respond: () => 200,
    forRecipient: (userId) => received.filter((r) => r.event.recipient === userId),
    stop,
    start: listen,
    close: stop,
  };
  return receiver;
}

/** msgIds per eventId, over every request: a retry must repeat its event's body exactly. */
export function eventsById(requests: readonly ReceivedWebhook[]): Map<string, { raw: string; msgIds: string[]; attempts: number }> {
  const byId = new Map<string, { raw: string; msgIds: string[]; attempts: number }>();
  for (const r of requests) {
    const seen = byId.get(r.event.eventId);
    if (seen) {
      if (seen.raw !== r.raw) throw new Error(`event ${r.event.eventId} was posted with two different bodies`);
      seen.attempts++;
    } else byId.set(r.event.eventId, { raw: r.raw, msgIds: r.event.messages.map((m) => m.msgId), attempts: 1 });
  }
  return byId;
}
