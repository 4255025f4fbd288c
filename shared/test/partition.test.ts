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

  it('spreads conversations over every partition', () => {
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[partitionOfKey(`room-${i}`, 4)]! += 1;
    for (const c of counts) expect(c).toBeGreaterThan(800);
  });
});
