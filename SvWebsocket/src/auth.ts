/** Client identity: HS256 JWTs (jose), sub = user id, exp required. */
import { jwtVerify, SignJWT, errors as joseErrors } from 'jose';
import { isUserId, USER_ID_RULE } from '@simplechat/shared';

export interface Identity {
  userId: string;
  /** seconds since the epoch */
  exp: number;
}

export type VerifyResult = { ok: true; identity: Identity } | { ok: false; reason: string };

export interface Auth {
  verify(token: string): Promise<VerifyResult>;
  sign(userId: string, ttlSeconds: number): Promise<string>;
}

export function createAuth(deps: { secrets: readonly string[]; clockToleranceSec?: number }): Auth {
  const keys = deps.secrets.map((s) => new TextEncoder().encode(s));
  const [signingKey] = keys;
  if (!signingKey) throw new Error('createAuth needs at least one secret');
  return {
    async verify(token) {
      let lastReason = 'invalid token';
      for (const key of keys) {
        try {
          const { payload } = await jwtVerify(token, key, { algorithms: ['HS256'], requiredClaims: ['exp', 'sub'], clockTolerance: deps.clockToleranceSec ?? 5 });
          if (!isUserId(payload.sub)) return { ok: false, reason: `token sub must be a user id (${USER_ID_RULE})` };
          return { ok: true, identity: { userId: payload.sub, exp: payload.exp as number } };
        } catch (err) {
          if (err instanceof joseErrors.JWTExpired) return { ok: false, reason: 'token expired; get a new token' };
          if (err instanceof joseErrors.JWTClaimValidationFailed) return { ok: false, reason: `token claim invalid: ${err.message}` };
          if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
            lastReason = 'token signature is invalid';
            continue;
          }
          return { ok: false, reason: 'token is malformed or uses an unsupported algorithm (HS256 expected)' };
        }
      }
      return { ok: false, reason: lastReason };
    },
    sign(userId, ttlSeconds) {
      return new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject(userId).setIssuedAt().setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds).sign(signingKey);
    },
  };
}
