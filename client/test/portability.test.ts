/**
 * The package runs in browsers and Node alike: its source imports nothing but
 * its own modules, and uses no Node global. (tsc with `types: []` refuses Node
 * globals; an explicit import of ws or a node: module would still compile.)
 */
import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';

const SRC = resolve(__dirname, '..', 'src');
const code = (file: string) =>
  readFileSync(resolve(SRC, file), 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/\/\/.*$/gm, '');

describe('the package source', () => {
  it('imports only its own modules and uses no Node API', () => {
    const files = readdirSync(SRC).filter((f) => f.endsWith('.ts'));
    expect(files).toContain('chat-client.ts');
    for (const f of files) {
      const text = code(f);
      const specs = [...text.matchAll(/^(?:import|export)\s[^;]*?\sfrom\s+'([^']+)';|^import\s+'([^']+)';|\bimport\s*\(\s*'([^']+)'/gm)].map((m) => m[1] ?? m[2] ?? m[3]);
      for (const spec of specs) expect(spec, `${f} imports ${spec}`).toMatch(/^\.\/[\w.-]+\.js$/);
      expect(text, f).not.toMatch(/\b(?:require|Buffer|process|__dirname|setImmediate)\b/);
    }
  });
});
