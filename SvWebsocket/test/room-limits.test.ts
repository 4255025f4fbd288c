/**
 * Rate limits of rooms (PROTOCOL.md "Rooms"): room sends count against
 * ROOM_RATE_LIMIT_PER_SEC per room, across every gateway, and room creation
 * against the sender's own rate limit; both are answered rate_limited with
 * retryAfterMs and the request's id.
 */
import { describe, it, expect } from 'vitest';
import { clusterPerFile, uid } from '../../test/cluster';

const cluster = clusterPerFile({ wsCount: 2, wsEnv: { ROOM_RATE_LIMIT_PER_SEC: '3', RATE_LIMIT_PER_SEC: '4', RATE_LIMIT_BURST: '4' } });

describe('room rate limits', () => {
  it('a room takes at most ROOM_RATE_LIMIT_PER_SEC messages a second, whoever sends them on whichever gateway', async () => {
    const [alice, bob] = [uid('alice'), uid('bob')];
    const a = await cluster.connect(alice, 0);
    const b = await cluster.connect(bob, 1);
    const room = (await a.request({ type: 'room.create', name: 'Busy', members: [bob] })).room as string;
    const answers = await Promise.all([
      a.request({ type: 'send', id: 'r1', room, body: 'one' }),
      b.request({ type: 'send', id: 'r2', room, body: 'two' }),
      a.request({ type: 'send', id: 'r3', room, body: 'three' }),
      b.request({ type: 'send', id: 'r4', room, body: 'four' }),
    ]);
    expect(answers.filter((f) => f.type === 'ack')).toHaveLength(3);
    const refused = answers.find((f) => f.type === 'error');
    expect(refused).toMatchObject({ code: 'rate_limited', retryAfterMs: expect.any(Number) });
    expect(String(refused?.message)).toMatch(/ROOM_RATE_LIMIT_PER_SEC/);
    // a direct message of the same users is not the room's
    expect(await b.request({ type: 'send', id: 'd1', to: alice, body: 'direct' })).toMatchObject({ type: 'ack' });
  });

  it("creating rooms counts against the sender's rate limit", async () => {
    const carol = uid('carol');
    const c = await cluster.connect(carol);
    const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => c.request({ type: 'room.create', id: `c${i}`, name: `Room ${i}`, members: [] })));
    expect(answers.filter((f) => f.type === 'room.info')).toHaveLength(4);
    for (const f of answers.filter((x) => x.type === 'error')) expect(f).toMatchObject({ code: 'rate_limited', retryAfterMs: expect.any(Number), id: expect.stringMatching(/^c\d$/) });
  });
});
