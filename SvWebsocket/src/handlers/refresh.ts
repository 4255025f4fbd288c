/** `refresh`: a new token for the same user moves the connection's expiry. */
import { ErrorCode } from '@simplechat/shared';
import { idOf, type Handler } from './context';

export const refresh: Handler<'refresh'> = async (ctx, session, frame) => {
  const verified = await ctx.auth.verify(frame.token);
  if (!verified.ok) return session.sendError(ErrorCode.UNAUTHORIZED, `refresh refused: ${verified.reason}; the connection keeps its current token`, frame.id);
  if (verified.identity.userId !== session.userId) return session.sendError(ErrorCode.UNAUTHORIZED, 'refresh refused: the token is for another user', frame.id);
  session.exp = verified.identity.exp;
  ctx.armExpiry(session);
  session.send({ type: 'refreshed', ...idOf(frame), exp: session.exp });
};
