/**
 * Client identity (jose): HS256 with JWT_SECRET (and JWT_SECRET_PREVIOUS during
 * a rotation), or RS256/ES256 against a configured public key or a JWKS URL
 * (keys cached by jose, refetched on an unknown kid). `sub` is the user id,
 * `exp` is required and good until then, `iss`/`aud` are checked when configured. The algorithm
 * decides the key: an HS256 token is only ever checked against the secrets and
 * an RS/ES token only against public keys, so one cannot pass for the other.
 */
import { jwtVerify, SignJWT, importSPKI, createRemoteJWKSet, decodeProtectedHeader, errors as joseErrors, type JWTVerifyGetKey, type KeyLike } from 'jose';
import { isUserId, USER_ID_RULE } from '@simplechat/shared';

export interface Identity {
  userId: string;
  /** seconds since the epoch */
  exp: number;
}

export type VerifyResult = { ok: true; identity: Identity } | { ok: false; reason: string };

export interface Auth {
  verify(token: string): Promise<VerifyResult>;
  /** development tokens; only with an HS256 secret */
  readonly canSign: boolean;
  sign(userId: string, ttlSeconds: number): Promise<string>;
}

export interface AuthDeps {
  secrets: readonly string[];
  publicKeyPem?: string;
  jwksUrl?: string;
  /** asymmetric algorithms accepted with the public key or JWKS */
  publicAlgorithms?: readonly string[];
  issuer?: string;
  audience?: string;
  clockToleranceSec?: number;
}

export const PUBLIC_ALGORITHMS = ['RS256', 'ES256'] as const;

export function createAuth(deps: AuthDeps): Auth {
  const secrets = deps.secrets.map((s) => new TextEncoder().encode(s));
  const publicAlgorithms = new Set(deps.publicAlgorithms ?? PUBLIC_ALGORITHMS);
  const pemKeys = new Map<string, Promise<KeyLike>>();
  const jwks: JWTVerifyGetKey | undefined = deps.jwksUrl ? createRemoteJWKSet(new URL(deps.jwksUrl), { timeoutDuration: 3000, cooldownDuration: 30_000, cacheMaxAge: 10 * 60_000 }) : undefined;
  if (secrets.length === 0 && !deps.publicKeyPem && !jwks) throw new Error('createAuth needs a secret, a public key or a JWKS URL');
  const claims = { requiredClaims: ['exp', 'sub'], issuer: deps.issuer, audience: deps.audience, clockTolerance: deps.clockToleranceSec ?? 5 };

  function explain(err: unknown): string {
    if (err instanceof joseErrors.JWTExpired) return 'token expired; get a new token';
    if (err instanceof joseErrors.JWTClaimValidationFailed) return `token claim '${err.claim}' is invalid (${err.reason})`;
    if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'token signature is invalid';
    if (err instanceof joseErrors.JWKSNoMatchingKey) return 'no signing key matches the token (kid)';
    if (err instanceof joseErrors.JWKSTimeout || (err as { code?: string }).code === 'ERR_JOSE_GENERIC') return 'signing keys of the identity provider are unavailable; retry later';
    return 'token is malformed';
  }

  async function verifyWith(token: string, key: Uint8Array | KeyLike | JWTVerifyGetKey, alg: string): Promise<VerifyResult> {
    const { payload } = await jwtVerify(token, key as Uint8Array, { ...claims, algorithms: [alg] });
    if (!isUserId(payload.sub)) return { ok: false, reason: `token sub must be a user id (${USER_ID_RULE})` };
    // A token is good until its exp (PROTOCOL.md): the clock tolerance is for nbf and iat only, or
    // a token a few seconds past exp would be answered `registered` and closed at once.
    if ((payload.exp as number) * 1000 <= Date.now()) return { ok: false, reason: 'token expired; get a new token' };
    return { ok: true, identity: { userId: payload.sub, exp: payload.exp as number } };
  }

  return {
    async verify(token) {
      let alg: string | undefined;
      try {
        alg = decodeProtectedHeader(token).alg;
      } catch {
        return { ok: false, reason: 'token is malformed (not a JWS)' };
      }
      try {
        if (alg === 'HS256' && secrets.length > 0) {
          let last: unknown;
          for (const secret of secrets) {
            try {
              return await verifyWith(token, secret, alg);
            } catch (err) {
              if (!(err instanceof joseErrors.JWSSignatureVerificationFailed)) throw err;
              last = err;
            }
          }
          throw last;
        }
        if (alg && publicAlgorithms.has(alg) && (deps.publicKeyPem || jwks)) {
          if (deps.publicKeyPem) {
            let key = pemKeys.get(alg);
            if (!key) pemKeys.set(alg, (key = importSPKI(deps.publicKeyPem, alg)));
            try {
              return await verifyWith(token, await key, alg);
            } catch (err) {
              if (!jwks) throw err;
            }
          }
          if (jwks) return await verifyWith(token, jwks, alg);
        }
        return { ok: false, reason: `token algorithm ${alg ?? 'none'} is not accepted` };
      } catch (err) {
        return { ok: false, reason: explain(err) };
      }
    },
    canSign: secrets.length > 0,
    sign(userId, ttlSeconds) {
      const [secret] = secrets;
      if (!secret) return Promise.reject(new Error('no HS256 secret configured'));
      return new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject(userId).setIssuedAt().setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds).sign(secret);
    },
  };
}
