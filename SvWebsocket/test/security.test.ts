/** Attacks on identity and on the gateway itself, against real services. */
import { describe, it, expect, afterEach } from 'vitest';
import { createServer, type Server } from 'node:http';
import { Writable } from 'node:stream';
import { generateKeyPair, exportSPKI, exportJWK, SignJWT } from 'jose';
import { createLogger, ProtocolSocket } from '@simplechat/shared';
import { startCluster, uid, type TestCluster } from '../../test/cluster';
import { JWT_SECRET } from '../../test/helpers';

let c: TestCluster | undefined;
let jwksServer: Server | undefined;
const open: ProtocolSocket[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) s.close();
  await c?.close();
  c = undefined;
  await new Promise<void>((r) => (jwksServer ? jwksServer.close(() => r()) : r()));
  jwksServer = undefined;
});

async function tryRegister(cl: TestCluster, token: string): Promise<{ type: string; code?: unknown; close?: number }> {
  const s = await ProtocolSocket.open(cl.wsUrl());
  open.push(s);
  const answer = await s.register(token);
  if (answer.type === 'registered') return { type: 'registered' };
  return { type: String(answer.type), code: answer.code, close: await s.waitForClose() };
}

const sign = (key: Parameters<SignJWT['sign']>[0], alg: string, claims: { sub: string; iss?: string; aud?: string; kid?: string }) => {
  let jwt = new SignJWT({}).setProtectedHeader({ alg, ...(claims.kid ? { kid: claims.kid } : {}) }).setSubject(claims.sub).setExpirationTime('10m');
  if (claims.iss) jwt = jwt.setIssuer(claims.iss);
  if (claims.aud) jwt = jwt.setAudience(claims.aud);
  return jwt.sign(key);
};

describe('client identity with public keys', () => {
  it('RS256 with JWT_PUBLIC_KEY: the right key passes; another key, and an HS256 token made with the public key as secret, are refused', async () => {
    const { publicKey, privateKey } = await generateKeyPair('RS256');
    const other = await generateKeyPair('RS256');
    const pem = await exportSPKI(publicKey);
    c = await startCluster({ wsCount: 1, wsEnv: { JWT_SECRET: '', JWT_PUBLIC_KEY: pem.replace(/\n/g, '\\n') } });
    const alice = uid('alice');
    expect(await tryRegister(c, await sign(privateKey, 'RS256', { sub: alice }))).toEqual({ type: 'registered' });
    expect(await tryRegister(c, await sign(other.privateKey, 'RS256', { sub: alice }))).toMatchObject({ code: 'unauthorized', close: 4401 });
    // algorithm confusion: the public key used as an HMAC secret
    expect(await tryRegister(c, await sign(new TextEncoder().encode(pem), 'HS256', { sub: alice }))).toMatchObject({ code: 'unauthorized', close: 4401 });
    // no secret configured: no development tokens either
    const res = await fetch(`${c.httpUrl()}/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"userId":"alice"}' });
    expect(res.status).toBe(404);
  });

  it('ES256 from a JWKS URL, with iss and aud required when configured', async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    jwksServer = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] })));
    await new Promise<void>((r) => jwksServer?.listen(0, '127.0.0.1', () => r()));
    const port = (jwksServer.address() as { port: number }).port;
    c = await startCluster({ wsCount: 1, wsEnv: { JWT_JWKS_URL: `http://127.0.0.1:${port}/jwks.json`, JWT_ISSUER: 'https://id.example', JWT_AUDIENCE: 'simplechat' } });
    const alice = uid('alice');
    expect(await tryRegister(c, await sign(privateKey, 'ES256', { sub: alice, kid: 'k1', iss: 'https://id.example', aud: 'simplechat' }))).toEqual({ type: 'registered' });
    expect(await tryRegister(c, await sign(privateKey, 'ES256', { sub: alice, kid: 'k1', iss: 'https://evil.example', aud: 'simplechat' }))).toMatchObject({ code: 'unauthorized', close: 4401 });
    expect(await tryRegister(c, await sign(privateKey, 'ES256', { sub: alice, kid: 'k1', iss: 'https://id.example', aud: 'other-app' }))).toMatchObject({ code: 'unauthorized', close: 4401 });
    // HS256 is not accepted at all here, even signed with the development secret
    expect(await tryRegister(c, await c.token(alice))).toMatchObject({ code: 'unauthorized', close: 4401 });
  });

  it('during a JWT_SECRET rotation tokens of the previous secret still pass, others do not', async () => {
    c = await startCluster({ wsCount: 1, wsEnv: { JWT_SECRET: 'the-new-secret-the-new-secret-0123456789', JWT_SECRET_PREVIOUS: JWT_SECRET } });
    const alice = uid('alice');
    expect(await tryRegister(c, await c.token(alice))).toEqual({ type: 'registered' });
    expect(await tryRegister(c, await c.token(alice, { secret: 'the-new-secret-the-new-secret-0123456789' }))).toEqual({ type: 'registered' });
    expect(await tryRegister(c, await c.token(alice, { secret: 'some-third-secret-some-third-secret-000' }))).toMatchObject({ code: 'unauthorized' });
  });
});

describe('logs', () => {
  it('never contain tokens, even of refused or malformed registrations', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    c = await startCluster({ wsCount: 1, log: createLogger('test', 'debug', sink) });
    const good = await c.token(uid('alice'));
    const bad = await c.token(uid('alice'), { secret: 'wrong-secret-wrong-secret-wrong-000000' });
    await tryRegister(c, good);
    await tryRegister(c, bad);
    const s = await ProtocolSocket.open(c.wsUrl());
    open.push(s);
    s.send({ type: 'register', token: 12345, note: good });
    await s.waitForClose().catch(() => undefined);
    const all = lines.join('');
    expect(all.length).toBeGreaterThan(0);
    for (const t of [good, bad]) {
      expect(all).not.toContain(t);
      expect(all).not.toContain(t.split('.')[2]);
    }
  });
});
