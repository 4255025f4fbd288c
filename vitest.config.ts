import { defineConfig, type Plugin } from 'vitest/config';
import { resolve } from 'node:path';

const clientSrc = resolve(__dirname, 'client/src');

/** client/src imports the protocol as './wire.js' (tsc's rootDirs there): the file is shared/src/wire.ts. */
const clientWire: Plugin = {
  name: 'simplechat-client-wire',
  enforce: 'pre',
  resolveId(source, importer) {
    if (source === './wire.js' && importer !== undefined && resolve(importer, '..') === clientSrc) return resolve(__dirname, 'shared/src/wire.ts');
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
