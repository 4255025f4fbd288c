/** The package's webhook signature helper: the one the notifier signs with (shared/src/webhook-signature.ts), as a receiver imports it. */
import { describe, expect, it } from 'vitest';
import { signWebhook, verifyWebhook } from '@simplechat/client';
import { signWebhook as serverSign } from '../../shared/src/webhook-signature';

const secret = 'a-webhook-secret-of-at-least-32-bytes!';
const body = '{"type":"messages.missed","eventId":"01JD","recipient":"bob","messages":[],"ts":1}';

describe('verifyWebhook from @simplechat/client', () => {
  it("accepts the server's signature of the raw body and refuses a tampered body, another secret or a stale t", async () => {
    const now = Math.floor(Date.now() / 1000);
    const header = await serverSign(secret, body, now);
    expect(header).toEqual(await signWebhook(secret, body, now));
    expect(await verifyWebhook(secret, body, header)).toBe(true);
    expect(await verifyWebhook(secret, body.replace('bob', 'eve'), header)).toBe(false);
    expect(await verifyWebhook(`${secret}x`, body, header)).toBe(false);
    expect(await verifyWebhook(secret, body, await signWebhook(secret, body, now - 3600))).toBe(false);
    expect(await verifyWebhook(secret, body, undefined)).toBe(false);
  });
});
