/**
 * The `SimpleChat-Signature` header of notification webhooks (PROTOCOL.md v1.2):
 * `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" keyed with the secret>`.
 * Self-contained on purpose: WebCrypto only (globalThis.crypto.subtle), no Node
 * API and no import, so the same file runs in browsers, edge runtimes and
 * Node >= 20, and a receiver can copy it as it is.
 */

/** How old (or how far ahead) a signature's `t` may be, by default, before it is refused as a replay. */
export const WEBHOOK_TOLERANCE_SEC = 300;

export const WEBHOOK_SIGNATURE_HEADER = 'SimpleChat-Signature';
export const WEBHOOK_EVENT_ID_HEADER = 'SimpleChat-Event-Id';

const encoder = new TextEncoder();

type HmacKey = Awaited<ReturnType<typeof globalThis.crypto.subtle.importKey>>;
/** Imported keys by usage and secret: a sender signs every request with the same secret. */
const keys = new Map<string, Promise<HmacKey>>();
const MAX_CACHED_KEYS = 8;

function hmacKey(secret: string, usage: 'sign' | 'verify'): Promise<HmacKey> {
  const id = `${usage}:${secret}`;
  let key = keys.get(id);
  if (!key) {
    if (keys.size >= MAX_CACHED_KEYS) keys.clear();
    key = globalThis.crypto.subtle.importKey('raw', encoder.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [usage]);
    keys.set(id, key);
  }
  return key;
}

/** What is signed: "<t>." followed by the body's exact bytes. */
// Uint8Array<ArrayBuffer>: WebCrypto's BufferSource (DOM typings) refuses views that may be shared.
function signedBytes(t: number, body: string | Uint8Array): Uint8Array<ArrayBuffer> {
  const prefix = encoder.encode(`${t}.`);
  const raw = typeof body === 'string' ? encoder.encode(body) : body;
  const out = new Uint8Array(prefix.length + raw.length);
  out.set(prefix, 0);
  out.set(raw, prefix.length);
  return out;
}

function toHex(bytes: ArrayBuffer): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** undefined unless `hex` is a whole number of hex byte pairs */
function fromHex(hex: string): Uint8Array<ArrayBuffer> | undefined {
  if (hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(hex)) return undefined;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** The header value for `body` sent at `t` (Unix seconds). */
export async function signWebhook(secret: string, body: string | Uint8Array, t: number): Promise<string> {
  const key = await hmacKey(secret, 'sign');
  const mac = await globalThis.crypto.subtle.sign('HMAC', key, signedBytes(t, body));
  return `t=${t},v1=${toHex(mac)}`;
}

export interface VerifyWebhookOptions {
  /** seconds `t` may differ from now (default 300); older deliveries are refused as replays */
  toleranceSec?: number;
  /** the current time, ms since the epoch (default Date.now()) */
  now?: number;
}

/**
 * Whether `header` signs `rawBody` (the body exactly as received, before any JSON parsing)
 * with `secret`, at a `t` within the tolerance. Any `v1=` of the header may match (a sender
 * may sign with a current and a previous secret). The comparison is WebCrypto's verify,
 * which takes the same time wherever the bytes differ.
 */
export async function verifyWebhook(secret: string, rawBody: string | Uint8Array, header: string | null | undefined, options: VerifyWebhookOptions = {}): Promise<boolean> {
  if (!header) return false;
  let t: number | undefined;
  const signatures: Uint8Array<ArrayBuffer>[] = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    const name = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (name === 't' && /^\d{1,12}$/.test(value)) t = Number(value);
    else if (name === 'v1') {
      const bytes = fromHex(value);
      if (bytes) signatures.push(bytes);
    }
  }
  if (t === undefined || signatures.length === 0) return false;
  const nowSec = (options.now ?? Date.now()) / 1000;
  if (Math.abs(nowSec - t) > (options.toleranceSec ?? WEBHOOK_TOLERANCE_SEC)) return false;
  const key = await hmacKey(secret, 'verify');
  const data = signedBytes(t, rawBody);
  for (const signature of signatures) if (await globalThis.crypto.subtle.verify('HMAC', key, signature, data)) return true;
  return false;
}
