/** `room.create`: a new room with the sender as owner; counts against the sender's rate limit. */
import { ErrorCode } from '@simplechat/shared';
import { idOf, type Handler } from './context';

export const roomCreate: Handler<'room.create'> = async (ctx, session, frame) => {
  const wait = session.bucket?.take() ?? 0;
  if (wait > 0) {
    ctx.metrics?.rateLimited();
    return session.sendError(ErrorCode.RATE_LIMITED, `creating rooms too fast (limit ${ctx.limits.rateLimitPerSec}/s with sends); retry after ${wait} ms`, frame.id, { retryAfterMs: wait });
  }
  const owner = session.userId as string;
  session.send({ type: 'room.info', ...idOf(frame), ...(await ctx.rooms.create({ userId: owner }, { name: frame.name, owner, members: frame.members })) });
};
