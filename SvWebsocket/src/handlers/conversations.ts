/** `conversations`: the caller's conversation list, newest first, from storage. */
import { idOf, type Handler } from './context';

export const conversations: Handler<'conversations'> = async (ctx, session, frame) => {
  const page = await ctx.fromStorage('conversations could not be read', () => ctx.persist.conversations(session.userId as string, frame.before));
  session.send({ type: 'conversations', ...idOf(frame), conversations: page.conversations, more: page.more });
};
