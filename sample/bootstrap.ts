import { ConsoleLogger, type INestApplication, type LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { AppModule } from './app.module.js';
import { JsonLogger } from './json-logger.js';
import type { SampleConfig } from './sample.config.js';

/** Creates (without listening) the sample app on the configured platform. */
export async function createSampleApp(
  config: SampleConfig,
  logger?: LoggerService,
): Promise<INestApplication> {
  const log =
    logger ??
    (config.logFormat === 'json' ? new JsonLogger() : new ConsoleLogger({ prefix: 'sample', compact: true }));
  const module = AppModule.register(config);
  const app =
    config.platform === 'fastify'
      ? await NestFactory.create(module, new FastifyAdapter({ bodyLimit: 1_048_576 }), {
          logger: log,
          abortOnError: false,
        })
      : await NestFactory.create(module, { logger: log, bodyParser: false, abortOnError: false });
  if (config.platform === 'express') {
    (app as unknown as { useBodyParser(t: string, o: object): void }).useBodyParser('json', { limit: '1mb' });
  }
  return app;
}
