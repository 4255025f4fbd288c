/** The parser of server frames: known types are checked field by field, unknown types pass as they came. */
import { describe, expect, it } from 'vitest';
import { isFrameOf, parseServerFrame, parseWireMessage } from '@simplechat/client';

const m = { msgId: '01JD0000000000000000000001', from: 'bob', to: 'alice', body: 'hi', ts: 1, seq: 1 };

describe('parseServerFrame', () => {
  it('parses known frames and drops the ones with bad fields', () => {
    expect(parseServerFrame(JSON.stringify({ type: 'message', ...m, extra: 1 }))).toEqual({ type: 'message', ...m });
    expect(parseServerFrame(JSON.stringify({ type: 'ack', id: 'c1', msgId: m.msgId, ts: 1, seq: 2 }))).toEqual({ type: 'ack', id: 'c1', msgId: m.msgId, ts: 1, seq: 2 });
    expect(parseServerFrame(JSON.stringify({ type: 'ack', id: 'c1', msgId: m.msgId, ts: 1 }))).toBeUndefined();
    expect(parseServerFrame(JSON.stringify({ type: 'registered', userId: 'alice', instanceId: 'ws-1', syncIntervalMs: 500 }))).toMatchObject({ type: 'registered', userId: 'alice', syncIntervalMs: 500 });
    expect(parseServerFrame(JSON.stringify({ type: 'sync', id: 's', messages: [m, { msgId: 'x' }], cursor: '5', more: true }))).toEqual({ type: 'sync', id: 's', messages: [m], cursor: '5', more: true, empty: [] });
    expect(parseServerFrame(JSON.stringify({ type: 'error', code: 'brand_new', message: 'x' }))).toMatchObject({ type: 'error', code: 'internal' });
    for (const bad of ['not json', '[]', '{"no":"type"}', '{"type":5}']) expect(parseServerFrame(bad)).toBeUndefined();
  });

  it('passes a frame of a type it does not know as it came', () => {
    const f = parseServerFrame(JSON.stringify({ type: 'typing', from: 'bob', to: 'alice' }));
    expect(f).toEqual({ type: 'typing', from: 'bob', to: 'alice' });
    expect(f && isFrameOf(f, 'message')).toBe(false);
  });

  it('takes a message to a user or to a room, never both', () => {
    expect(parseWireMessage({ ...m, to: undefined, room: 'r_1' })).toEqual({ msgId: m.msgId, from: 'bob', room: 'r_1', body: 'hi', ts: 1, seq: 1 });
    expect(parseWireMessage({ ...m, room: 'r_1' })).toBeUndefined();
  });
});
