import { describe, it, expect } from 'vitest';
import { conversationKey, directConversation, peerOf, roomConversation } from '../src/conversation';

describe('conversation', () => {
  it('a direct conversation has one key from both sides', () => {
    expect(conversationKey(directConversation('bob', 'alice'))).toBe(conversationKey(directConversation('alice', 'bob')));
    expect(conversationKey(directConversation('bob', 'alice'))).toBe('alice:bob');
  });

  it('the peer of a direct conversation is the other side, and oneself for a self-conversation', () => {
    const c = directConversation('bob', 'alice');
    if (c.kind !== 'direct') throw new Error('direct expected');
    expect(peerOf(c, 'alice')).toBe('bob');
    expect(peerOf(c, 'bob')).toBe('alice');
    const self = directConversation('carol', 'carol');
    if (self.kind !== 'direct') throw new Error('direct expected');
    expect(peerOf(self, 'carol')).toBe('carol');
  });

  it("a room's key is its id", () => {
    expect(conversationKey(roomConversation('r_01JD'))).toBe('r_01JD');
  });
});
