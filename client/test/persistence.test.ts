/** A stored outbox is read back entry by entry: anything not well formed is dropped. */
import { describe, expect, it } from 'vitest';
import { parseOutbox } from '@simplechat/client';

describe('parseOutbox', () => {
  it('keeps entries to a user or a room, drops the rest', () => {
    const good = [
      { id: 'a', to: 'bob', body: 'x', createdAt: 1 },
      { id: 'b', room: 'r_1', body: 'y', createdAt: 2 },
    ];
    const bad = [null, 'x', { id: 'c', body: 'z', createdAt: 3 }, { id: 'd', to: 'bob', room: 'r_1', body: 'z', createdAt: 3 }, { id: 5, to: 'bob', body: 'z', createdAt: 3 }];
    expect(parseOutbox([...good, ...bad])).toEqual(good);
    expect(parseOutbox({ not: 'an array' })).toEqual([]);
  });
});
