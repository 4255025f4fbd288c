import { describe, expect, it } from 'vitest';
import { parseOptions, type Options } from './options';

function options(args: string[]): Options {
  const parsed = parseOptions(args);
  if (parsed.kind !== 'options') throw new Error(`expected options, got ${JSON.stringify(parsed)}`);
  return parsed.options;
}

function problems(args: string[]): string[] {
  const parsed = parseOptions(args);
  if (parsed.kind !== 'problems') throw new Error(`expected problems, got ${parsed.kind}`);
  return parsed.problems;
}

describe('bench options', () => {
  it('runs every part but partitions by default', () => {
    const o = options([]);
    expect([...o.only]).toEqual(['raw', 'cross', 'same', 'hold', 'sio', 'drain', 'conn', 'rooms', 'presence', 'receipts']);
    expect(o.partitions).toEqual([]);
    expect(o.deadlineS).toBe(1500 + 1200 + 300);
  });

  it('--partitions alone runs only its part, with the counts sorted and once each', () => {
    const o = options(['--partitions', '4,1,2,2']);
    expect([...o.only]).toEqual(['partitions']);
    expect(o.partitions).toEqual([1, 2, 4]);
    expect(o.partitionRates).toEqual([1000, 2000]);
    expect(o.rabbitPorts).toEqual([5801, 5802, 5803]);
    expect(o.backlog).toBe(200_000);
    // no other part: the deadline is the partitions part's alone
    expect(o.deadlineS).toBe(600 + 3 * 240);
  });

  it('--partitions with --only runs the parts named too', () => {
    const o = options(['--partitions', '1,2', '--only', 'drain,raw']);
    expect([...o.only].sort()).toEqual(['drain', 'partitions', 'raw']);
    expect(o.deadlineS).toBe(1500 + 600 + 2 * 240);
  });

  it('--only partitions takes the counts 1,2,4', () => {
    const o = options(['--only', 'partitions']);
    expect(o.partitions).toEqual([1, 2, 4]);
  });

  it('--quick shortens the backlog, the rates and the deadline', () => {
    const o = options(['--quick', '--partitions', '1,2,4']);
    expect(o.backlog).toBe(50_000);
    expect(o.partitionRates).toEqual([1000]);
    expect(o.deadlineS).toBe(300 + 3 * 60);
  });

  it('takes the queue-type rates, the cluster ports and an explicit deadline', () => {
    const o = options(['--partitions', '2', '--partition-rates', '500,1500', '--rabbit-ports', '5811,5812,5813', '--deadline-s', '900']);
    expect(o.partitionRates).toEqual([500, 1500]);
    expect(o.rabbitPorts).toEqual([5811, 5812, 5813]);
    expect(o.deadlineS).toBe(900);
  });

  it('refuses partition counts outside 1..64, bad ports and --ws', () => {
    expect(problems(['--partitions', '0,2'])).toContain('--partitions must be whole numbers from 1 to 64, comma-separated');
    expect(problems(['--partitions', '65'])).toContain('--partitions must be whole numbers from 1 to 64, comma-separated');
    expect(problems(['--partitions', 'two'])).toContain('--partitions must be whole numbers from 1 to 64, comma-separated');
    expect(problems(['--partitions', '2', '--rabbit-ports', '5801,5802'])).toContain('--rabbit-ports needs three different ports');
    expect(problems(['--partitions', '2', '--rabbit-ports', '5801,5801,5802'])).toContain('--rabbit-ports needs three different ports');
    expect(problems(['--partitions', '2', '--ws', 'ws://a/ws,ws://b/ws', '--jwt-secret', 's'])).toContain('--partitions starts clusters of its own: it cannot run against --ws');
  });

  it('refuses an unknown part and says which exist', () => {
    expect(problems(['--only', 'drain,parts'])).toEqual(['--only: unknown part parts (one of raw,cross,same,hold,sio,drain,conn,rooms,presence,receipts,partitions)']);
  });

  it('answers --help', () => {
    expect(parseOptions(['--help'])).toEqual({ kind: 'help' });
  });
});
