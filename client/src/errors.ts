/** What the client's promises reject with. */

/** The client was closed before the send or request was answered. */
export class ChatClientClosedError extends Error {
  constructor() {
    super('chat client closed');
    this.name = 'ChatClientClosedError';
  }
}

/** A send refused for good: by the server (bad_request, too_large, forbidden, not_found...) or, for a frame too large to send, by the client itself. */
export class SendRejectedError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'SendRejectedError';
  }
}

/** Why a request failed: the server's error code, or what happened on this side. */
export type RequestErrorCode = string | 'timeout' | 'disconnected' | 'closed';

/** A request answered by an `error` frame (its `code`), or never answered: `timeout`, `disconnected` (no connection, or it dropped first), `closed`. */
export class RequestError extends Error {
  constructor(
    readonly code: RequestErrorCode,
    message: string,
    /** with `rate_limited` */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'RequestError';
  }
}
