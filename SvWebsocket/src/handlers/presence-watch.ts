/** `presence.watch`: the watched users' states now, and their changes from then on (presence.ts). */
import { idOf, type Handler } from './context';

export const presenceWatch: Handler<'presence.watch'> = async (ctx, session, frame) => {
  const users = await ctx.presence.watch(session, frame.users);
  session.send({ type: 'presence', ...idOf(frame), users });
};
