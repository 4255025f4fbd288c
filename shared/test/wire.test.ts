import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import ts from 'typescript';
import * as protocol from '../src/protocol';
import * as wire from '../src/wire';

describe('the wire module', () => {
  it('imports nothing, so the browser page loads it as emitted (no bundler, no zod)', () => {
    const source = readFileSync(resolve(__dirname, '..', 'src', 'wire.ts'), 'utf8');
    const { importedFiles } = ts.preProcessFile(source, true, true);
    expect(importedFiles.map((f) => f.fileName)).toEqual([]);
  });

  it('is what the server protocol module exports: the same objects, not copies', () => {
    for (const [name, value] of Object.entries(wire)) expect(protocol[name as keyof typeof protocol], name).toBe(value);
  });

  it('tells error codes of the protocol from other strings', () => {
    for (const code of Object.values(wire.ErrorCode)) expect(wire.isErrorCode(code)).toBe(true);
    for (const other of ['', 'BAD_REQUEST', 'nope', 42, undefined]) expect(wire.isErrorCode(other)).toBe(false);
  });
});
