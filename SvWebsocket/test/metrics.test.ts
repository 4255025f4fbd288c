import { describe, it, expect } from 'vitest';
import { createMetrics } from '@simplechat/shared';
import { createWsMetrics } from '../src/metrics';

function build() {
  const registry = createMetrics({ service: 'SvWebsocket', instanceId: 'ws-1' });
  const m = createWsMetrics(registry, { connections: () => ({ connections: 3, sockets: 4 }), users: () => 2, dependencies: () => ({ rabbitmq: true }) });
  return { registry, m };
}

describe('SvWebsocket metrics', () => {
  it('counts frames out by the type at the start of the serialised frame (sync and sync.hint apart)', async () => {
    const { registry, m } = build();
    m.frameSent(JSON.stringify({ type: 'sync', messages: [], cursor: '1', more: false }));
    m.frameSent(JSON.stringify({ type: 'sync.hint' }));
    m.frameSent(JSON.stringify({ type: 'sync.hint' }));
    m.frameSent(JSON.stringify({ type: 'message', msgId: 'x' }));
    m.frameSent('{"unexpected":true}');
    m.frameSent('{"type":"messages"}');
    const text = await registry.render();
    const count = (type: string) => Number(new RegExp(`simplechat_frames_out_total\\{type="${type.replace('.', '\\.')}",[^}]*\\} (\\d+)`).exec(text)?.[1]);
    expect([count('sync'), count('sync.hint'), count('message'), count('ack'), count('other')]).toEqual([1, 2, 1, 0, 2]);
  });

  it('reads connection gauges at scrape time and starts reason counters at 0', async () => {
    const { registry, m } = build();
    m.connectionRefused('origin');
    const text = await registry.render();
    expect(text).toMatch(/^simplechat_connections_open\{[^}]*\} 3$/m);
    expect(text).toMatch(/^simplechat_sockets_open\{[^}]*\} 4$/m);
    expect(text).toMatch(/^simplechat_connections_refused_total\{reason="origin",[^}]*\} 1$/m);
    expect(text).toMatch(/^simplechat_connections_refused_total\{reason="draining",[^}]*\} 0$/m);
    expect(text).toMatch(/^simplechat_server_closes_total\{code="1001",[^}]*\} 0$/m);
  });

  it('sums up the interval for the log line and starts over', () => {
    const { m } = build();
    m.connectionOpened();
    m.connectionOpened();
    m.connectionClosed();
    m.acked(0.01);
    m.forwarded(3, 0.002, false);
    expect(m.takeSummary()).toEqual({ opened: 2, closed: 1, refused: 0, acks: 1, forwardFailures: 1, publishFailures: 0 });
    expect(m.takeSummary()).toEqual({ opened: 0, closed: 0, refused: 0, acks: 0, forwardFailures: 0, publishFailures: 0 });
  });
});
