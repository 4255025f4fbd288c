/** `receipt`: a delivered or read mark (receipts.ts); answered only with an error, when refused. */
import type { Handler } from './context';

export const receipt: Handler<'receipt'> = (ctx, session, frame) => ctx.receipts.accept(session.userId as string, frame, session);
