/** `mute`: no notifications of missed messages in this conversation until `until` (0 unmutes); stored before it is answered. */
import { conversationKey, directConversation, roomConversation } from '@simplechat/shared';
import { idOf, type Handler } from './context';

export const mute: Handler<'mute'> = async (ctx, session, frame) => {
  const user = session.userId as string;
  if (frame.room !== undefined) {
    await ctx.rooms.forMember(frame.room, user, 'mute it');
  }
  const conversation = frame.room !== undefined ? roomConversation(frame.room) : directConversation(user, frame.with);
  await ctx.fromStorage('the mute could not be stored', () => ctx.persist.mute(user, conversationKey(conversation), frame.until));
  const target = frame.room !== undefined ? { room: frame.room } : { with: frame.with };
  session.send({ type: 'muted', ...idOf(frame), ...target, until: frame.until });
};
