/** `conversations`: the caller's conversation list, newest first, from storage, with the marks moved since (receipts.ts). */
import { idOf, type Handler } from './context';

export const conversations: Handler<'conversations'> = async (ctx, session, frame) => {
  const user = session.userId as string;
  const page = await ctx.fromStorage('conversations could not be read', () => ctx.persist.conversations(user, frame.before));
  session.send({ type: 'conversations', ...idOf(frame), conversations: await ctx.receipts.withMarks(user, page.conversations), more: page.more });
};
