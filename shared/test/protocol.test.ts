import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseClientFrame, checkBody, codePointLength, ErrorCode } from '../src/protocol';

const limits = { maxBodyChars: 10 };
const parse = (v: unknown) => parseClientFrame(typeof v === 'string' ? v : JSON.stringify(v), limits);

describe('parseClientFrame', () => {
  it('accepts each v1 frame type and fills defaults', () => {
    expect(parse({ type: 'register', token: 't' })).toEqual({ ok: true, frame: { type: 'register', token: 't' } });
    expect(parse({ type: 'send', id: 'c-1', to: 'bob', body: 'hi' })).toMatchObject({ ok: true, frame: { type: 'send', id: 'c-1', to: 'bob', body: 'hi' } });
    expect(parse({ type: 'history', with: 'bob' })).toMatchObject({ ok: true, frame: { limit: 50 } });
    expect(parse({ type: 'sync' })).toMatchObject({ ok: true, frame: { limit: 200 } });
    expect(parse({ type: 'refresh', token: 'x' })).toMatchObject({ ok: true });
  });

  it('ignores unknown fields such as a forged from', () => {
    const r = parse({ type: 'send', id: 'a', to: 'bob', body: 'x', from: 'mallory' });
    expect(r.ok && r.frame).not.toHaveProperty('from');
  });

  it('rejects invalid JSON, non-objects, missing or unknown type with bad_request', () => {
    for (const raw of ['{', '[]', '"x"', '42', 'null', JSON.stringify({}), JSON.stringify({ type: 7 }), JSON.stringify({ type: 'nope' })]) {
      const r = parse(raw);
      expect(r.ok).toBe(false);
      expect(!r.ok && r.code).toBe(ErrorCode.BAD_REQUEST);
    }
  });

  it('carries the frame id on errors when it was a string', () => {
    expect(parse({ type: 'send', id: 'c-9', to: 'bad id!', body: 'x' })).toMatchObject({ ok: false, id: 'c-9', code: 'bad_request' });
    expect(parse({ type: 'send', id: 5, to: 'bob', body: 'x' })).not.toHaveProperty('id');
  });

  it('names the field that is wrong', () => {
    const r = parse({ type: 'send', id: 'a', body: 'x' });
    expect(!r.ok && r.message).toMatch(/'to' is required/);
    const l = parse({ type: 'history', with: 'bob', limit: 500 });
    expect(!l.ok && l.message).toMatch(/limit/);
  });

  it('tells a wrongly typed field from a missing one, and names each field once', () => {
    const message = (v: unknown) => {
      const r = parse(v);
      return r.ok ? undefined : r.message;
    };
    expect(message({ type: 'sync', id: 5 })).toBe("sync: field 'id' must be a string");
    expect(message({ type: 'send', id: 'a', to: null, body: 'x' })).toBe("send: field 'to' must be a string");
    expect(message({ type: 'history', with: 'bob', limit: '5' })).toBe("history: field 'limit' must be a number");
    expect(message({ type: 'history', with: 'bob', limit: 1.5 })).toBe("history: field 'limit' must be an integer from 1 to 200");
    expect(message({ type: 'register', token: '' })).toBe("register: field 'token' must not be empty");
    expect(message({ type: 'register' })).toBe("register: field 'token' is required");
    expect(message({ type: 'send', id: '', to: 'b', body: 'x' })).toBe("send: field 'id' must be 1-64 characters");
  });

  it('takes as history.before only a msgId of the form this server issues (a ULID, any case)', () => {
    for (const before of ['garbage', 'two words', '01JD', '01JD00000000000000000000000', '01JD0000000000000000000I00', 'a\u0000b']) {
      expect(parse({ type: 'history', with: 'bob', before })).toMatchObject({ ok: false, code: 'bad_request', message: "history: field 'before' must be the msgId of a message" });
    }
    expect(parse({ type: 'history', with: 'bob', before: '01jdxyz0000000000000000000' })).toMatchObject({ ok: true, frame: { before: '01JDXYZ0000000000000000000' } });
  });

  it('enforces id 1-64 characters, limits and cursor shape', () => {
    expect(parse({ type: 'send', id: '', to: 'b', body: 'x' }).ok).toBe(false);
    expect(parse({ type: 'send', id: 'x'.repeat(65), to: 'b', body: 'x' }).ok).toBe(false);
    expect(parse({ type: 'sync', limit: 0 }).ok).toBe(false);
    expect(parse({ type: 'sync', limit: 501 }).ok).toBe(false);
    expect(parse({ type: 'sync', after: 'abc' }).ok).toBe(false);
    expect(parse({ type: 'history', with: 'b', limit: 2.5 }).ok).toBe(false);
  });

  it('answers too_large for a body past the limit, counted in code points', () => {
    expect(parse({ type: 'send', id: 'a', to: 'b', body: '😀'.repeat(10) }).ok).toBe(true);
    expect(parse({ type: 'send', id: 'a', to: 'b', body: 'x'.repeat(11) })).toMatchObject({ ok: false, code: 'too_large', id: 'a' });
  });

  it('never throws and always returns a frame or a protocol error (property)', () => {
    const codes = new Set(Object.values(ErrorCode));
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), fc.jsonValue().map((v) => JSON.stringify(v)), fc.record({ type: fc.constantFrom('send', 'register', 'history', 'sync', 'refresh', 'x'), id: fc.anything(), to: fc.anything(), body: fc.anything(), limit: fc.anything() }).map((v) => JSON.stringify(v))), (raw) => {
        const r = parseClientFrame(raw, { maxBodyChars: 4000 });
        if (r.ok) expect(['register', 'refresh', 'send', 'history', 'sync']).toContain(r.frame.type);
        else expect(codes.has(r.code)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('checkBody', () => {
  it('refuses NUL, control characters and lone surrogates but keeps tab, LF, CR', () => {
    expect(checkBody('a\tb\nc\r', 100)).toBeNull();
    expect(checkBody('a\u0000b', 100)?.code).toBe('bad_request');
    expect(checkBody('a\u0007b', 100)?.code).toBe('bad_request');
    expect(checkBody('a\u009fb', 100)?.code).toBe('bad_request');
    expect(checkBody('a\ud800b', 100)?.code).toBe('bad_request');
    expect(checkBody('', 100)?.code).toBe('bad_request');
    expect(checkBody('<img src=x onerror=alert(1)> "quotes" 😀', 100)).toBeNull();
  });

  it('counts an emoji as one character', () => {
    expect(codePointLength('😀a')).toBe(2);
  });
});
