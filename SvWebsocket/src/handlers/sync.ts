/** `sync`: what was stored for the user after a cursor, in storage order. */
import { idOf, type Handler } from './context';

export const sync: Handler<'sync'> = async (ctx, session, frame) => {
  const res = await ctx.fromStorage('sync could not be read', () => ctx.persist.sync(session.userId as string, frame.after, frame.limit));
  session.send({ type: 'sync', ...idOf(frame), messages: res.messages.map((m) => ({ type: 'message' as const, ...m })), cursor: res.cursor, more: res.more, empty: res.empty ?? [] });
};
