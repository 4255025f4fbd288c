/** `history`: a page of one conversation (a direct one, or a room the caller is in), oldest first. */
import { idOf, type Handler } from './context';

export const history: Handler<'history'> = async (ctx, session, frame) => {
  const user = session.userId as string;
  const res = await ctx.fromStorage('history could not be read', () => ctx.persist.history(user, frame.with === undefined ? { room: frame.room } : { with: frame.with }, frame.before, frame.limit));
  const messages = res.messages.map((m) => ({ type: 'message' as const, ...m }));
  const empty = { empty: res.empty ?? [] };
  session.send(frame.with === undefined ? { type: 'history', ...idOf(frame), room: frame.room, messages, more: res.more, ...empty } : { type: 'history', ...idOf(frame), with: frame.with, messages, more: res.more, ...empty });
};
