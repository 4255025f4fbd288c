/** What frame handlers share: the gateway's dependencies and its per-instance state. */
import type { ClientFrame, ClientFrameType, Logger } from '@simplechat/shared';
import type { GatewayDeps, GatewayLimits } from '../gateway';
import type { GatewayMetrics } from '../metrics';
import type { TokenBucket } from '../rate-limit';
import type { Session } from '../session';

export interface GatewayContext extends Omit<GatewayDeps, 'limits' | 'log' | 'metrics' | 'isOriginAllowed'> {
  limits: GatewayLimits;
  log: Logger;
  metrics: GatewayMetrics | undefined;
  /** the user's send bucket on this instance (shared by its connections here) */
  bucketFor(userId: string): TokenBucket;
  /** this user's claim in SvDiscover: made for its first connection here, awaited by the others; false when it failed */
  claim(userId: string, isFirstHere: boolean): Promise<boolean>;
  /** the storage position for `registered`; undefined while storage is unreachable */
  readCursor(): Promise<string | undefined>;
  /** a call to SvPersist; its failure becomes an UnavailableError the client can act on, saying `what` failed ("history could not be read") */
  fromStorage<T>(what: string, read: () => Promise<T>): Promise<T>;
  /** (re)arms the token expiry of a registered session */
  armExpiry(session: Session): void;
  /** sends in progress on this instance (accepted, not yet answered) */
  sends: { inProgress: number };
  /** handles the frames a session received while it registered */
  replayQueued(session: Session): void;
}

export type Handler<T extends ClientFrameType> = (ctx: GatewayContext, session: Session, frame: Extract<ClientFrame, { type: T }>) => Promise<void> | void;

export type HandlerTable = { [T in ClientFrameType]: Handler<T> };

/** `{ id }` when the request had one, for its answer. */
export const idOf = (frame: { id?: string | undefined }): { id?: string } => (frame.id === undefined ? {} : { id: frame.id });
