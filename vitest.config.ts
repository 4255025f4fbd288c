import { defineConfig, type Plugin } from 'vitest/config';
import { resolve } from 'node:path';

const clientSrc = resolve(__dirname, 'client/src');
/** The files of shared/src that the client package compiles in (client/tsconfig.wire.*.json). */
const FROM_SHARED = new Set(['./wire.js', './webhook-signature.js']);

/** client/src imports them as './wire.js', './webhook-signature.js' (tsc's rootDirs there): the files are in shared/src. */
const clientWire: Plugin = {
  name: 'simplechat-client-wire',
  enforce: 'pre',
  resolveId(source, importer) {
    if (FROM_SHARED.has(source) && importer !== undefined && resolve(importer, '..') === clientSrc) return resolve(__dirname, 'shared/src', source.replace(/\.js$/, '.ts'));
    return null;
  },
};

export default defineConfig({
  plugins: [clientWire],
  resolve: {
    alias: {
      '@simplechat/shared': resolve(__dirname, 'shared/src/index.ts'),
      '@simplechat/client': resolve(clientSrc, 'index.ts'),
    },
  },
  test: {
    include: ['{shared,client,SvDiscover,SvPersist,SvWebsocket,test,scripts}/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    reporters: process.env.CI ? ['default'] : ['default'],
  },
});
