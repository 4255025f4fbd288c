/** The SimpleChat-Signature header (PROTOCOL.md v1.2): HMAC-SHA256 over "<t>.<raw body>", hex, with a replay window. */
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signWebhook, verifyWebhook } from '../src/webhook-signature';

const SECRET = 'a-webhook-secret-of-more-than-32-bytes!';
const BODY = '{"type":"messages.missed","eventId":"01JD","recipient":"bob","messages":[],"ts":1}';
const T = 1_800_000_000;
const NOW = T * 1000 + 2000;

describe('webhook signatures', () => {
  it('signs "<t>.<raw body>" with HMAC-SHA256 in hex, as any HMAC library computes it', async () => {
    const header = await signWebhook(SECRET, BODY, T);
    expect(header).toBe(`t=${T},v1=${createHmac('sha256', SECRET).update(`${T}.${BODY}`).digest('hex')}`);
    expect(await signWebhook(SECRET, new TextEncoder().encode(BODY), T)).toBe(header);
  });

  it('verifies the raw body it signed, and refuses a tampered body, another secret, a stale or future t, and malformed headers', async () => {
    const header = await signWebhook(SECRET, BODY, T);
    expect(await verifyWebhook(SECRET, BODY, header, { now: NOW })).toBe(true);
    expect(await verifyWebhook(SECRET, new TextEncoder().encode(BODY), header, { now: NOW })).toBe(true);
    expect(await verifyWebhook(SECRET, BODY.replace('bob', 'eve'), header, { now: NOW })).toBe(false);
    expect(await verifyWebhook(`${SECRET}x`, BODY, header, { now: NOW })).toBe(false);
    expect(await verifyWebhook(SECRET, BODY, header, { now: NOW + 301_000 })).toBe(false);
    expect(await verifyWebhook(SECRET, BODY, header, { now: NOW - 400_000 })).toBe(false);
    expect(await verifyWebhook(SECRET, BODY, header, { now: NOW + 3_600_000, toleranceSec: 7200 })).toBe(true);
    expect(await verifyWebhook(SECRET, BODY, header.replace(`t=${T}`, `t=${T + 1}`), { now: NOW })).toBe(false);
    for (const bad of [undefined, null, '', 'v1=abc', `t=${T}`, `t=${T},v1=`, `t=${T},v1=zz`, `t=x,v1=${header.split('v1=')[1]}`]) expect(await verifyWebhook(SECRET, BODY, bad, { now: NOW })).toBe(false);
  });

  it('accepts any v1 of the header (signed with a current and a previous secret)', async () => {
    const current = await signWebhook(SECRET, BODY, T);
    const previous = await signWebhook('the-previous-secret-of-32-bytes-or-more', BODY, T);
    expect(await verifyWebhook(SECRET, BODY, `${previous},v1=${current.split('v1=')[1]}`, { now: NOW })).toBe(true);
  });
});
