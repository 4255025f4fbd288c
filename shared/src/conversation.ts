/**
 * A conversation: a direct pair of users or a room. Defined once here and
 * carried from the send frame through the queue to storage; its key (the
 * `conversation_id` of stored rows, the scope of positions) comes from
 * conversationKey alone.
 */
export type Conversation = { readonly kind: 'direct'; readonly a: string; readonly b: string } | { readonly kind: 'room'; readonly id: string };

/** The direct conversation of two users (either order; a user with itself is one too). */
export function directConversation(x: string, y: string): Conversation {
  return x < y ? { kind: 'direct', a: x, b: y } : { kind: 'direct', a: y, b: x };
}

export function roomConversation(id: string): Conversation {
  return { kind: 'room', id };
}

/** "a:b" (sorted) for a direct pair; the room id for a room (room ids hold no ':'). */
export function conversationKey(c: Conversation): string {
  return c.kind === 'direct' ? `${c.a}:${c.b}` : c.id;
}

/** The other side of a direct conversation, seen from `me` (itself for a self-conversation). */
export function peerOf(c: Conversation & { kind: 'direct' }, me: string): string {
  return c.a === me ? c.b : c.a;
}
