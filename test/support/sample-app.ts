import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import { createSampleApp } from '../../sample/bootstrap.js';
import { readSampleConfig } from '../../sample/sample.config.js';
import type { FakeOpenAIServer } from '../../lib/testing/index.js';
import { CapturingLogger } from './capturing-logger.js';

export type Platform = 'express' | 'fastify';
export const PLATFORMS: Platform[] = ['express', 'fastify'];

export const TEST_API_KEY = 'sk-test-e2e-secret-key-DO-NOT-LEAK-1234567890abcd';

export interface SampleAppHandle {
  app: INestApplication;
  /** The Node HTTP server, for supertest. */
  server: ReturnType<INestApplication['getHttpServer']>;
  logger: CapturingLogger;
  close(): Promise<void>;
}

/**
 * Starts the sample app (not listening on a port: supertest drives its server) on `platform`,
 * against `fake`, with sample environment variables `env` (NODE_ENV defaults to development).
 */
export async function startSampleApp(
  platform: Platform,
  fake: FakeOpenAIServer,
  env: Record<string, string> = {},
): Promise<SampleAppHandle> {
  const config = readSampleConfig(
    { NODE_ENV: 'development', SAMPLE_PLATFORM: platform, ...env },
    { apiKey: env.OPENAI_API_KEY ?? TEST_API_KEY, baseURL: fake.baseURL },
  );
  const logger = new CapturingLogger();
  const app = await createSampleApp(config, logger);
  await app.init();
  if (platform === 'fastify') await (app as NestFastifyApplication).getHttpAdapter().getInstance().ready();
  return { app, server: app.getHttpServer(), logger, close: () => app.close() };
}

export const auth = (token = 'alice-token') => ({ authorization: `Bearer ${token}` });
export const userMessage = (content: string) => ({ messages: [{ role: 'user', content }] });
