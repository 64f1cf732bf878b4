import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { describe, expect, it } from 'vitest';
import { OpenAIConfigError, OpenAIModule, type OpenAIModuleOptions } from '../../lib/index.js';
import { CapturingLogger } from '../support/capturing-logger.js';
import { PLATFORMS, TEST_API_KEY } from '../support/sample-app.js';

const BAD: OpenAIModuleOptions = {
  environment: 'production',
  timeouts: { attemptMs: 0, deadlineMs: -1 },
  models: { default: 'gpt-4o', allow: ['gpt-4o'], fallbacks: ['gpt-4o-mini-2024-07-18'] },
  logging: { prompts: true },
};
const BAD_PATHS = [
  'apiKey',
  'timeouts.attemptMs',
  'timeouts.deadlineMs',
  'models.default',
  'models.fallbacks[0]',
  'logging.prompts',
];

/** The error a boot promise rejects with (fails the test when it resolves). */
async function bootError(boot: Promise<unknown>): Promise<OpenAIConfigError> {
  const outcome = await boot.then(
    () => new Error('expected the boot to fail'),
    (e: unknown) => e,
  );
  expect(outcome).toBeInstanceOf(OpenAIConfigError);
  return outcome as OpenAIConfigError;
}

function moduleWith(options: OpenAIModuleOptions) {
  @Module({ imports: [OpenAIModule.forRoot(options)] })
  class AppModule {}
  return AppModule;
}

describe.each(PLATFORMS)('boot on %s', (platform) => {
  const create = (module: object, logger: CapturingLogger) =>
    platform === 'fastify'
      ? NestFactory.create(module as never, new FastifyAdapter(), { logger, abortOnError: false })
      : NestFactory.create(module as never, { logger, abortOnError: false });

  it('logs the effective configuration once, with the key as a fingerprint', async () => {
    const logger = new CapturingLogger();
    const app = await create(
      moduleWith({
        environment: 'development',
        apiKey: TEST_API_KEY,
        baseURL: 'http://127.0.0.1:9/v1',
        defaultHeaders: { 'x-internal-token': 'hdr-secret-value' },
        identity: { salt: 'salt-secret-value' },
        retry: { maxRetries: 3 },
      }),
      logger,
    );
    try {
      const lines = logger.lines.filter(
        (l) => typeof l.message === 'string' && l.message.startsWith('effective configuration'),
      );
      expect(lines).toHaveLength(1);
      expect(lines[0].context).toBe('OpenAIModule');
      const json = JSON.parse((lines[0].message as string).replace(/^effective configuration: /, ''));
      expect(json).toMatchObject({
        environment: 'development',
        apiKey: 'sk-...abcd',
        retry: { maxRetries: 3 },
        models: { pinning: 'warn' },
      });
      const text = logger.text();
      expect(text).not.toContain(TEST_API_KEY);
      expect(text).not.toContain(TEST_API_KEY.slice(3, 20));
      expect(text).not.toContain('hdr-secret-value');
      expect(text).not.toContain('salt-secret-value');
    } finally {
      await app.close();
    }
  });

  it('does not log the configuration in the test environment', async () => {
    const logger = new CapturingLogger();
    const app = await create(moduleWith({ environment: 'test', apiKey: TEST_API_KEY }), logger);
    await app.close();
    expect(logger.text()).not.toContain('effective configuration');
  });

  it('NestFactory.create rejects with every problem listed', async () => {
    const logger = new CapturingLogger();
    const err = await bootError(create(moduleWith(BAD), logger));
    const paths = err.problems.map((p) => p.path);
    expect(paths).toEqual(expect.arrayContaining(BAD_PATHS));
    for (const p of BAD_PATHS) expect(err.message).toContain(`  - ${p}: `);
  });
});

describe('boot with the testing module', () => {
  it('Test.createTestingModule(...).compile() rejects with forRoot', async () => {
    const compiled = Test.createTestingModule({ imports: [OpenAIModule.forRoot(BAD)] })
      .setLogger(new CapturingLogger())
      .compile();
    await expect(compiled).rejects.toBeInstanceOf(OpenAIConfigError);
    const err = await bootError(compiled);
    expect(err.problems.map((p) => p.path)).toEqual(expect.arrayContaining(BAD_PATHS));
  });

  it('Test.createTestingModule(...).compile() rejects with forRootAsync', async () => {
    const compiled = Test.createTestingModule({
      imports: [
        OpenAIModule.forRootAsync({
          useFactory: async () => ({
            environment: 'staging',
            apiKey: '',
            timeouts: { attemptMs: 2_000, deadlineMs: 1_000 },
          }),
        }),
      ],
    })
      .setLogger(new CapturingLogger())
      .compile();
    const err = await bootError(compiled);
    expect(err.environment).toBe('staging');
    expect(err.problems.map((p) => p.path).sort()).toEqual(['apiKey', 'timeouts.deadlineMs']);
  });

  it('an unknown NODE_ENV fails at boot', async () => {
    const saved = process.env.NODE_ENV;
    process.env.NODE_ENV = 'prod';
    try {
      const err = await bootError(
        Test.createTestingModule({ imports: [OpenAIModule.forRoot({ apiKey: TEST_API_KEY })] })
          .setLogger(new CapturingLogger())
          .compile(),
      );
      expect(err.problems.map((p) => p.path)).toEqual(['environment']);
    } finally {
      process.env.NODE_ENV = saved;
    }
  });
});
