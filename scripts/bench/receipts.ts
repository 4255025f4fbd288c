/**
 * Receipt rows of the benchmark (`--only receipts`): what receipts cost the
 * server side, per message, at fixed rates of cross-instance direct messages
 * (the `cross` steps' shape, on the run's cluster and users). At each rate
 * the same step runs four times in alternated order, A B B A (B A A B at the
 * next rate), so a drift of the host over the part weighs on both alike:
 * A with clients sending no receipts, B with every receiving connection
 * answering every message with a `delivered` and then a `read` receipt whose
 * upTo is that message's position (`seq`; each conversation here has one
 * sender at a few messages per second, so its messages arrive in position
 * order and the position is the highest one below which the client has no
 * hole: the load process counts the messages for which that was not so, and
 * the receipts refused). Each step's CPU window runs until the broker's queue
 * is empty, so storing the receipts counts. The headline per rate: server
 * CPU per delivered message with and without, per process, and their ratio.
 */
import type { ReceiptKind } from '../../shared/src/wire';
import type { ProcUsage } from './procs';
import { num, type LoadOutcome, type TableRow } from './table';

/** the receipts every receiving connection sends per message in the B runs, in this order */
export const RECEIPTS_SENT: ReceiptKind[] = ['delivered', 'read'];

/** What this part reads of a step of index.ts. */
export interface ReceiptStep extends LoadOutcome {
  delivered: number;
  usageWhole: Record<string, ProcUsage>;
  receiptsSent: number;
  receiptPushes: number;
  receiptErrors: Record<string, number>;
  receiptErrorSamples: Record<string, string>;
  outOfOrder: number;
}

export interface ReceiptContext {
  o: { receiptRates: number[]; stepMs: number; quick: boolean };
  /** one cross-instance step (a warm-up is not reported); `settle`: its CPU window runs on until the broker's queue is empty */
  runLoad(rate: number, durationMs: number, opts: { receipts?: ReceiptKind[]; settle: boolean; warmup?: boolean }): Promise<ReceiptStep>;
  /** the table row of a step, with the step notes of index.ts after `note` */
  loadRow(part: string, test: string, r: ReceiptStep, note: string): TableRow;
  /** server processes: [process name, short name] */
  serverSide: [string, string][];
  waitQueueEmpty(maxMs: number): Promise<void>;
  say(line: string): void;
  rows: TableRow[];
  results: Record<string, unknown>;
}

type Mode = 'none' | 'receipts';

/** µs of server CPU per delivered message over several steps, per process and in all */
function cpuPerMessage(steps: readonly ReceiptStep[], serverSide: [string, string][]): { total: number; parts: Record<string, number> } {
  const delivered = steps.reduce((n, r) => n + r.delivered, 0);
  const parts: Record<string, number> = {};
  let total = 0;
  for (const [k, short] of serverSide) {
    const s = steps.reduce((n, r) => n + (r.usageWhole[k]?.cpuSeconds ?? 0), 0);
    parts[short] = delivered ? (s * 1e6) / delivered : 0;
    total += parts[short];
  }
  return { total, parts };
}

const fmt = (c: { total: number; parts: Record<string, number> }) => `${num(c.total)} µs/msg (${Object.entries(c.parts).map(([k, v]) => `${k} ${num(v)}`).join(' ')})`;

export async function runReceipts(ctx: ReceiptContext): Promise<void> {
  const { o, say } = ctx;
  const byRate: Record<string, unknown> = {};
  ctx.results.receipts = byRate;
  // Not reported: the code paths of receipts and of messages warmed up, whatever ran before.
  await ctx.runLoad(o.receiptRates[0] as number, o.quick ? 1000 : 2000, { receipts: RECEIPTS_SENT, settle: false, warmup: true });
  for (const [i, rate] of o.receiptRates.entries()) {
    const order: Mode[] = i % 2 === 0 ? ['none', 'receipts', 'receipts', 'none'] : ['receipts', 'none', 'none', 'receipts'];
    say(`receipts at ${num(rate)} msg/s cross-instance: ${order.join(', ')} (${o.stepMs / 1000} s each)`);
    const runs: Record<Mode, ReceiptStep[]> = { none: [], receipts: [] };
    for (const mode of order) {
      await ctx.waitQueueEmpty(o.quick ? 3000 : 15_000);
      const r = await ctx.runLoad(rate, o.stepMs, { ...(mode === 'receipts' ? { receipts: RECEIPTS_SENT } : {}), settle: true });
      runs[mode].push(r);
      const bits: string[] = [];
      if (mode === 'receipts') {
        const errs = Object.entries(r.receiptErrors);
        bits.push(`clients sent ${num(r.receiptsSent)} receipts (${r.delivered ? (r.receiptsSent / r.delivered).toFixed(2) : '?'} per message: ${RECEIPTS_SENT.join(' + ')}, upTo = the message's seq), ${num(r.receiptPushes)} pushed back to the senders`);
        bits.push(errs.length ? `receipts REFUSED: ${errs.map(([k, v]) => `${k} ${num(v)} (${r.receiptErrorSamples[k] ?? ''})`).join(', ')}` : '0 receipts refused');
        bits.push(`${num(r.outOfOrder)} messages out of position order`);
      } else bits.push('no receipts');
      ctx.rows.push(ctx.loadRow('receipts', `cross ${num(rate)}/s for ${o.stepMs / 1000} s, ${mode === 'none' ? 'no receipts' : 'delivered + read per message'}`, r, bits.join('; ')));
    }
    const none = cpuPerMessage(runs.none, ctx.serverSide);
    const with_ = cpuPerMessage(runs.receipts, ctx.serverSide);
    const ratio = none.total ? with_.total / none.total : undefined;
    const perProcess = Object.fromEntries(Object.entries(with_.parts).map(([k, v]) => [k, none.parts[k] ? v / (none.parts[k] as number) : undefined]));
    const sum = (f: (r: ReceiptStep) => number) => runs.receipts.reduce((n, r) => n + f(r), 0);
    const refused = runs.receipts.reduce((n, r) => n + Object.values(r.receiptErrors).reduce((a, b) => a + b, 0), 0);
    byRate[String(rate)] = { order, none, receipts: with_, ratio, perProcess, receiptsSent: sum((r) => r.receiptsSent), receiptPushes: sum((r) => r.receiptPushes), refused, outOfOrder: sum((r) => r.outOfOrder) };
    say(`receipts at ${num(rate)}/s: server CPU ${num(with_.total)} µs/msg with, ${num(none.total)} without (× ${ratio?.toFixed(2) ?? '?'})`);
    ctx.rows.push({
      part: 'HEADLINE',
      test: `receipts: server CPU per message at ${num(rate)}/s cross-instance, delivered + read for every message vs none`,
      offered: rate,
      note: `with receipts ${fmt(with_)}; without ${fmt(none)}; ratio ${ratio?.toFixed(2) ?? '?'} (per process: ${Object.entries(perProcess).map(([k, v]) => `${k} ${v === undefined ? '–' : v.toFixed(2)}`).join(' ')}); two ${o.stepMs / 1000}-s steps of each, order ${order.map((m) => (m === 'none' ? 'A' : 'B')).join('')} (A none, B receipts), each step's CPU counted until the queue was empty; ${num(sum((r) => r.receiptsSent))} receipts sent, ${num(sum((r) => r.receiptPushes))} pushed, ${num(refused)} refused, ${num(sum((r) => r.outOfOrder))} messages out of position order`,
    });
  }
}
