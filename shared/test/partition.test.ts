import { describe, expect, it } from 'vitest';
import { directConversation, partitionOf, partitionOfKey, roomConversation } from '../src';

describe('partitionOf', () => {
  it('puts everything in partition 0 when there is one', () => {
    expect(partitionOf(directConversation('alice', 'bob'), 1)).toBe(0);
    expect(partitionOf(roomConversation('general'), 1)).toBe(0);
  });

  it('is the same for both sides of a direct conversation and stable across calls', () => {
    expect(partitionOf(directConversation('alice', 'bob'), 4)).toBe(partitionOf(directConversation('bob', 'alice'), 4));
    expect(partitionOfKey('alice:bob', 4)).toBe(partitionOfKey('alice:bob', 4));
  });

  it('spreads conversations evenly for every count, also keys that differ in one letter only', () => {
    for (const n of [2, 3, 4, 8]) {
      const counts = new Array<number>(n).fill(0);
      const users = Array.from({ length: 60 }, (_, i) => `user${String.fromCharCode(97 + (i % 26))}${Math.floor(i / 26)}`);
      for (const a of users) for (const b of users) if (a < b) counts[partitionOf(directConversation(a, b), n)]! += 1;
      const each = counts.reduce((x, y) => x + y, 0) / n;
      for (const c of counts) expect(Math.abs(c - each) / each, `${n} partitions: ${counts.join(',')}`).toBeLessThan(0.15);
    }
    // two users whose ids share everything but the first letter
    const pairs = ['alice', 'blice', 'clice', 'dlice', 'elice', 'flice', 'glice', 'hlice'].map((u) => partitionOf(directConversation(u, 'zed'), 2));
    expect(new Set(pairs).size).toBe(2);
  });

  it('spreads conversations over every partition', () => {
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[partitionOfKey(`room-${i}`, 4)]! += 1;
    for (const c of counts) expect(c).toBeGreaterThan(800);
  });
});
