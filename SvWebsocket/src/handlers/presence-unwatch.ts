/** `presence.unwatch`: no more changes of these users on this connection (no answer). */
import type { Handler } from './context';

export const presenceUnwatch: Handler<'presence.unwatch'> = (ctx, session, frame) => {
  ctx.presence.unwatch(session, frame.users);
};
