/** Base error with a stable machine-readable code; wrap causes, never lose them. */
export class SimpleChatError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'SimpleChatError';
  }
}

/** Invalid configuration: the message lists every problem, one per line. */
export class ConfigError extends SimpleChatError {
  constructor(message: string) {
    super('config', message);
    this.name = 'ConfigError';
  }
}

/** A dependency (Redis, RabbitMQ, Postgres, a peer service) could not do its part. */
export class UnavailableError extends SimpleChatError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('unavailable', message, options);
    this.name = 'UnavailableError';
  }
}

/** Codes a domain operation may fail with; the Server API maps each to its HTTP status. */
export const DOMAIN_ERROR_CODES = ['bad_request', 'forbidden', 'not_found', 'conflict', 'too_large', 'rate_limited', 'unavailable'] as const;
export type DomainErrorCode = (typeof DOMAIN_ERROR_CODES)[number];

/**
 * A request the domain refuses (no such room, not the owner, a repeat with other content...).
 * The message goes to the caller as it is: it says what was wrong, never a secret.
 */
export class DomainError extends SimpleChatError {
  declare readonly code: DomainErrorCode;
  /** with rate_limited (and possibly unavailable): when to try again */
  readonly retryAfterMs?: number;
  constructor(code: DomainErrorCode, message: string, options?: { cause?: unknown; retryAfterMs?: number }) {
    super(code, message, options);
    this.name = 'DomainError';
    if (options?.retryAfterMs !== undefined) this.retryAfterMs = options.retryAfterMs;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) {
    // AggregateError (e.g. ECONNREFUSED on ::1 and 127.0.0.1) hides the useful part in .errors
    const agg = err as Error & { errors?: unknown[] };
    if (!err.message && Array.isArray(agg.errors) && agg.errors.length > 0) return errorMessage(agg.errors[0]);
    const code = (err as { code?: unknown }).code;
    return err.message || (typeof code === 'string' ? code : err.name);
  }
  return String(err);
}

/**
 * A dependency that answers but refuses this login (wrong password, no password set, unknown
 * user): retrying cannot help until the URL's credentials are fixed, so it is said apart.
 */
export function isLoginRefused(err: unknown): boolean {
  return /WRONGPASS|NOAUTH|ACCESS[-_]REFUSED|AUTH <password> called without|password authentication failed/i.test(errorMessage(err));
}
