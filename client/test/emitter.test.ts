/** The client's typed event emitter. */
import { describe, expect, it, vi } from 'vitest';
import { Emitter } from '@simplechat/client';

type Events = { n: (value: number) => void };

describe('Emitter', () => {
  it('calls listeners in order, until removed; once runs once; a throwing listener does not stop the others', () => {
    const e = new Emitter<Events>();
    const seen: string[] = [];
    const error = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const off = e.on('n', (v) => seen.push(`a${v}`));
    e.on('n', () => {
      throw new Error('listener bug');
    });
    e.once('n', (v) => seen.push(`b${v}`));
    e.emit('n', 1);
    off();
    e.emit('n', 2);
    expect(seen).toEqual(['a1', 'b1']);
    expect(error).toHaveBeenCalledTimes(2);
    error.mockRestore();
  });
});
