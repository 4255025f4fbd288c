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

/**
 * test/clusters starts its own Redis Cluster and runs after the fault suite (npm test): named on
 * the command line it runs; otherwise (the parallel suite) it is left out.
 */
const isClustersRun = process.argv.some((arg) => arg.includes('test/clusters'));

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
    exclude: ['**/node_modules/**', '**/dist/**', ...(isClustersRun ? [] : ['test/clusters/**'])],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    reporters: process.env.CI ? ['default'] : ['default'],
  },
});
