/** Positions over partitions: their text form, and how they move. */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { isCursor } from '@simplechat/shared';
import { atLeast, componentOf, formatPosition, parsePosition, positionOf } from '../src/sync-cursor';

const at = (entries: [number, bigint][]) => new Map(entries);

describe('sync cursors over partitions', () => {
  it('a plain seq stands for every partition, and one partition (or all at one seq) is written as a plain seq', () => {
    const plain = parsePosition('1234');
    expect([0, 1, 63].map((p) => componentOf(plain, p))).toEqual([1234n, 1234n, 1234n]);
    expect(formatPosition(positionOf(at([[0, 99n]])))).toBe('99');
    expect(formatPosition(positionOf(at([[0, 7n], [3, 7n]])))).toBe('7');
    expect(formatPosition(parsePosition(undefined))).toBe('0');
  });

  it('several partitions: the smallest seq, then each partition past it with its distance', () => {
    const pos = positionOf(at([[0, 1000n], [2, 1040n], [7, 1003n]]));
    expect(formatPosition(pos)).toBe('1000.2_40.7_3');
    expect(componentOf(parsePosition('1000.2_40.7_3'), 2)).toBe(1040n);
    expect(componentOf(parsePosition('1000.2_40.7_3'), 5)).toBe(1000n);
    expect(isCursor('1000.2_40.7_3')).toBe(true);
  });

  it('never moves a component back; partitions that did not exist stand at the smallest', () => {
    const prev = parsePosition('1000.2_40');
    const next = atLeast(prev, at([[0, 990n], [2, 1100n], [3, 1010n]]), true);
    expect([0, 2, 3].map((p) => componentOf(next, p))).toEqual([1000n, 1100n, 1010n]);
    // not every partition known: the others keep the old smallest
    expect(componentOf(atLeast(parsePosition('500'), at([[1, 900n]]), false), 4)).toBe(500n);
  });

  it('takes only what it writes (isCursor), and reads back what it wrote (property)', () => {
    for (const bad of ['', 'abc', '1.', '1._2', '1.64_1', '1.2_1.2_3', '9223372036854775807.1_1', '-1', '1.2-3', '1.2_3.']) expect(isCursor(bad), bad).toBe(false);
    for (const good of ['0', '9223372036854775807', '5.0_1', '5.63_9223372036854775802']) expect(isCursor(good), good).toBe(true);
    fc.assert(
      fc.property(fc.dictionary(fc.integer({ min: 0, max: 63 }).map(String), fc.bigInt({ min: 0n, max: 2n ** 62n })), (dict) => {
        const pos = positionOf(new Map(Object.entries(dict).map(([p, c]) => [Number(p), c])));
        const text = formatPosition(pos);
        expect(isCursor(text)).toBe(true);
        const back = parsePosition(text);
        for (let p = 0; p < 64; p++) expect(componentOf(back, p)).toBe(componentOf(pos, p));
      }),
      { numRuns: 300 },
    );
  });
});
