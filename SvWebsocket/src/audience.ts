/**
 * Who a conversation's messages go to. A direct message reaches both sides
 * (every connection of the recipient and the sender's other connections; a
 * message to oneself reaches the sending connection too).
 */
import type { Conversation } from '@simplechat/shared';

export interface Audience {
  users: readonly string[];
  /** whether the sending connection is left out (it has the ack) */
  skipsSender: boolean;
}

export function audienceOf(conversation: Conversation, from: string): Audience {
  if (conversation.kind === 'direct') {
    if (conversation.a === conversation.b) return { users: [from], skipsSender: false };
    return { users: [conversation.a, conversation.b], skipsSender: true };
  }
  throw new Error(`no audience yet for a ${conversation.kind} conversation`);
}
