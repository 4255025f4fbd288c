/** Token timing: exp read from a JWT, when a cached token may be reused, when to refresh. */
import { describe, expect, it } from 'vitest';
import { jwtExp } from '@simplechat/client';
import { fakeToken } from './scripted-server';

// client/src is ES modules (its package.json) and this file CommonJS to tsc: an internal module comes in by dynamic import.
const token = () => import('../src/token.js');

describe('token timing', () => {
  it('reads exp without verifying, and nothing from what is not a JWT', () => {
    expect(jwtExp(fakeToken('alice', 1_900_000_000))).toBe(1_900_000_000);
    for (const t of ['', 'opaque', 'a.%%%.c', `a.${Buffer.from('"str"').toString('base64url')}.c`]) expect(jwtExp(t)).toBeUndefined();
  });

  it('reuses a token with more than 30 s left, and one of unknown exp never', async () => {
    const { isTokenFresh } = await token();
    const now = 1_000_000_000_000;
    expect(isTokenFresh(now / 1000 + 31, now)).toBe(true);
    expect(isTokenFresh(now / 1000 + 29, now)).toBe(false);
    expect(isTokenFresh(undefined, now)).toBe(false);
  });

  it('refreshes a minute before exp, a short-lived token halfway, never sooner than a second', async () => {
    const { refreshDelayMs } = await token();
    const now = 1_000_000_000_000;
    expect(refreshDelayMs(now / 1000 + 3600, now)).toBe(3540_000);
    expect(refreshDelayMs(now / 1000 + 100, now)).toBe(50_000);
    expect(refreshDelayMs(now / 1000 + 1, now)).toBe(1_000);
    expect(refreshDelayMs(now / 1000 + 10 ** 9, now)).toBe(2 ** 31 - 1);
  });
});
