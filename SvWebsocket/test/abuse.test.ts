/**
 * Hostile traffic against a running instance: a live fuzz run of random and
 * mutated frames against a real SvWebsocket process, and a flood by one user.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import fc from 'fast-check';
import { ProtocolSocket } from '@simplechat/shared';
import { startCluster, uid, wsProcessEnv, type TestCluster } from '../../test/cluster';
import { eventually } from '../../test/helpers';

const ROOT = resolve(__dirname, '..', '..');
let c: TestCluster;
let proc: ChildProcess;
let port = 0;
const logLines: string[] = [];

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

beforeAll(async () => {
  c = await startCluster({ wsCount: 1 });
  proc = spawn(process.execPath, [resolve(ROOT, 'SvWebsocket/dist/main.js'), '--port', '0', '--instance-id', 'ws-fuzz'], {
    cwd: ROOT,
    env: wsProcessEnv(c, {
      MAX_CONNECTIONS_PER_IP: '2000',
      RATE_LIMIT_PER_SEC: '100000',
      RATE_LIMIT_BURST: '100000',
    }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const listening = new Promise<number>((resolvePort, reject) => {
    proc.once('exit', (code) => reject(new Error(`SvWebsocket exited with ${code}: ${logLines.join('')}`)));
    for (const stream of [proc.stdout, proc.stderr]) {
      createInterface({ input: stream! }).on('line', (line) => {
        logLines.push(line);
        const m = /"port":(\d+)/.exec(line);
        if (m && line.includes('listening')) resolvePort(Number(m[1]));
      });
    }
  });
  port = await listening;
}, 60_000);

afterAll(async () => {
  if (proc && proc.exitCode === null) {
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
  }
  await c?.close();
});

const validFrames = fc.oneof(
  fc.record({ type: fc.constant('send'), id: fc.string({ minLength: 1, maxLength: 64 }), to: fc.constantFrom('bob', 'alice', 'x'), body: fc.string({ minLength: 1, maxLength: 200 }) }),
  fc.record({ type: fc.constant('history'), with: fc.constantFrom('bob', 'alice'), limit: fc.integer({ min: 1, max: 200 }) }),
  fc.record({ type: fc.constant('sync'), after: fc.constantFrom('0', '1', '99999999') }),
);
/** random text, random JSON, valid frames with fields replaced by anything, binary */
const hostileFrame = fc.oneof(
  fc.string({ maxLength: 300 }).map((s) => ({ text: s })),
  fc.json({ maxDepth: 4 }).map((s) => ({ text: s })),
  fc.tuple(validFrames, fc.constantFrom('type', 'id', 'to', 'body', 'limit', 'with', 'after', 'before', 'token'), fc.jsonValue({ maxDepth: 3 })).map(([f, k, v]) => ({ text: JSON.stringify({ ...f, [k]: v }) })),
  validFrames.map((f) => ({ text: JSON.stringify(f) })),
  fc.uint8Array({ maxLength: 200 }).map((b) => ({ binary: Buffer.from(b) })),
  fc.constantFrom({ text: '{"type":"register","token":"x"}' }, { text: '{"type":"send","id":"a","to":"b","body":"\\u0000"}' }, { text: `{"type":"send","id":"a","to":"b","body":"${'z'.repeat(5000)}"}` }, { text: '\ud800' }, { text: '' }),
);

describe('a live fuzz run', () => {
  it('10,000 random and mutated frames leave the instance serving others, with bounded memory and no unhandled rejection', async () => {
    const frames = fc.sample(hostileFrame, { numRuns: 10_000, seed: 4242 });
    const url = `ws://127.0.0.1:${port}/ws`;
    const token = await c.token(uid('fuzzer'));
    let rssAfterWarmup = 0;
    let sent = 0;
    let reconnects = 0;
    const lanes = 8;
    await Promise.all(
      Array.from({ length: lanes }, async (_, lane) => {
        let s: ProtocolSocket | undefined;
        for (let i = lane; i < frames.length; i += lanes) {
          if (!s || s.closeCode !== undefined || s.ws.readyState !== s.ws.OPEN) {
            s?.close();
            s = await ProtocolSocket.open(url, { timeoutMs: 10_000 });
            // half the lanes fuzz the unregistered state, half the registered one
            if (lane % 2 === 0) await s.register(token);
            reconnects++;
          }
          const f = frames[i] as { text?: string; binary?: Buffer };
          if (f.binary) s.sendRaw(f.binary, true);
          else s.sendRaw(f.text ?? '');
          sent++;
          if (sent === 1000) rssAfterWarmup = rssKiB(proc.pid!);
          // pace: every 50 frames, wait until the server has answered everything so far
          if (i % 50 === lane && s.closeCode === undefined && lane % 2 === 0) await s.request({ type: 'sync', after: '0', limit: 1 }).catch(() => undefined);
        }
        s?.close();
      }),
    );
    expect(sent).toBe(10_000);
    // another user is still served normally
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await ProtocolSocket.open(url);
    const b = await ProtocolSocket.open(url);
    expect((await a.register(await c.token(alice))).type).toBe('registered');
    expect((await b.register(await c.token(bob))).type).toBe('registered');
    const ack = await a.request({ type: 'send', id: 'after-fuzz', to: bob, body: 'still fine' });
    expect(ack.type).toBe('ack');
    await b.waitForMessage((m) => m.msgId === ack.msgId);
    a.close();
    b.close();
    // memory: the fuzz run's connections are gone and RSS did not keep growing
    const res = await fetch(`http://127.0.0.1:${port}/health`);
    await eventually(async () => expect(((await (await fetch(`http://127.0.0.1:${port}/health`)).json()) as { sockets: number }).sockets).toBe(0));
    expect(res.status).toBe(200);
    const rssEnd = rssKiB(proc.pid!);
    expect(rssEnd).toBeLessThan(rssAfterWarmup * 1.5 + 20_000);
    const problems = logLines.filter((l) => /unhandled|"level":"(error|fatal)"/.test(l));
    expect(problems).toEqual([]);
    expect(proc.exitCode).toBeNull();
    console.log(`fuzz: ${sent} frames over ${reconnects} connections; RSS ${Math.round(rssAfterWarmup / 1024)} MiB after 1,000 -> ${Math.round(rssEnd / 1024)} MiB after 10,000`);
  }, 120_000);
});

describe('a flood by one user', () => {
  it('the flooder gets rate_limited while others on the same instance are still acked, with latency close to a baseline from the same run', async () => {
    const cl = await startCluster({ wsCount: 1, wsEnv: { RATE_LIMIT_PER_SEC: '50', RATE_LIMIT_BURST: '50' } });
    try {
      const victim = await cl.connect(uid('victim'));
      const flooder = await cl.connect(uid('flooder'));
      const latency = async (n: number): Promise<number[]> => {
        const out: number[] = [];
        for (let i = 0; i < n; i++) {
          const t = performance.now();
          const r = await victim.request({ type: 'send', id: `v${Math.random()}`, to: 'bob', body: 'ping' });
          expect(r.type).toBe('ack');
          out.push(performance.now() - t);
          await new Promise((r2) => setTimeout(r2, 30));
        }
        return out.sort((x, y) => x - y);
      };
      const median = (xs: number[]) => xs[Math.floor(xs.length / 2)] as number;
      const baseline = median(await latency(20));
      let limited = 0;
      let flooding = true;
      const flood = (async () => {
        let i = 0;
        while (flooding) {
          const burst = Array.from({ length: 200 }, () => flooder.request({ type: 'send', id: `f${i++}`, to: 'bob', body: 'flood' }, 5000).catch(() => undefined));
          for (const r of await Promise.all(burst)) if (r?.type === 'error' && r.code === 'rate_limited') limited++;
        }
      })();
      const during = median(await latency(20));
      flooding = false;
      await flood;
      expect(limited).toBeGreaterThan(100);
      console.log(`flood: victim ack p50 ${baseline.toFixed(1)} ms before, ${during.toFixed(1)} ms during; ${limited} flood frames rate_limited`);
      // a shared, noisy machine: compare within the run, generously
      expect(during).toBeLessThan(baseline * 20 + 50);
    } finally {
      await cl.close();
    }
  }, 60_000);
});

describe('overload', () => {
  it('sends beyond MAX_PENDING_SENDS in progress are answered rate_limited at once; every send gets an answer and the acked ones are stored', async () => {
    const cl = await startCluster({ wsCount: 1, wsEnv: { MAX_PENDING_SENDS: '5', RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' } });
    try {
      const alice = await cl.connect(uid('alice'));
      const bob = uid('bob');
      const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => alice.request({ type: 'send', id: `o${i}`, to: bob, body: `m${i}` }, 10_000)));
      const acked = answers.filter((a) => a.type === 'ack');
      const shed = answers.filter((a) => a.type === 'error' && a.code === 'rate_limited');
      expect(acked.length + shed.length).toBe(200);
      expect(acked.length).toBeGreaterThanOrEqual(5);
      expect(shed.length).toBeGreaterThan(0);
      for (const s of shed) {
        expect(s).toMatchObject({ retryAfterMs: 250 });
        expect((s as { message: string }).message).toMatch(/overloaded .* retry after 250 ms with the same id/);
      }
      // a shed send retried later is accepted
      const retryId = (shed[0] as { id: string }).id;
      const retried = await alice.request({ type: 'send', id: retryId, to: bob, body: 'again' }, 10_000);
      expect(retried.type).toBe('ack');
      const stored = async () => (await cl.db.query('SELECT client_id FROM messages WHERE recipient = $1', [bob])).rows.map((r) => r.client_id as string).sort();
      const want = [...acked.map((a) => (a as { id: string }).id), retryId].sort();
      await eventually(async () => expect(await stored()).toEqual(want));
    } finally {
      await cl.close();
    }
  }, 60_000);
});
