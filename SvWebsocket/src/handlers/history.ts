/** `history`: a page of one conversation, oldest first. */
import { idOf, type Handler } from './context';

export const history: Handler<'history'> = async (ctx, session, frame) => {
  const res = await ctx.fromStorage('history', () => ctx.persist.history(session.userId as string, frame.with, frame.before, frame.limit));
  session.send({ type: 'history', ...idOf(frame), with: frame.with, messages: res.messages.map((m) => ({ type: 'message' as const, ...m })), more: res.more });
};
