import { fileURLToPath } from 'node:url';
import swc from 'unplugin-swc';
import { defineConfig } from 'vitest/config';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

// SWC emits decorator metadata, which Nest's DI needs; esbuild (Vite's default) does not.
export default defineConfig({
  plugins: [swc.vite({ module: { type: 'es6' } })],
  // The README's snippets import the package by name, as users do.
  resolve: {
    alias: [
      { find: /^nestjs-openai-production\/testing$/, replacement: here('./lib/testing/index.ts') },
      { find: /^nestjs-openai-production$/, replacement: here('./lib/index.ts') },
    ],
  },
  test: {
    include: ['lib/**/*.spec.ts', 'test/**/*.spec.ts'],
    exclude: ['**/node_modules/**', '**/dist/**', 'test/packaging/**'],
    environment: 'node',
    testTimeout: 20_000,
    hookTimeout: 30_000,
    pool: 'forks',
    globalSetup: ['test/setup/redis.global-setup.ts'],
    reporters: ['default'],
  },
});
