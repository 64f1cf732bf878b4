import { Module, type DynamicModule } from '@nestjs/common';
import { APP_FILTER, APP_GUARD } from '@nestjs/core';
import { OpenAIExceptionFilter, OpenAIModule } from '../lib/index.js';
import { BearerAuthGuard } from './auth/bearer-auth.guard.js';
import { ChatController } from './chat/chat.controller.js';
import { HealthController } from './health/health.controller.js';
import type { SampleConfig } from './sample.config.js';
import { SAMPLE_CONFIG } from './sample.tokens.js';

@Module({})
export class AppModule {
  /** The sample app for one configuration (the tests build it on Express and Fastify with their own). */
  static register(config: SampleConfig): DynamicModule {
    return {
      module: AppModule,
      imports: [
        OpenAIModule.forRoot({
          isGlobal: true,
          environment: config.environment,
          apiKey: config.apiKey,
          baseURL: config.baseURL,
          models: {
            ...(config.model ? { default: config.model } : {}),
            ...(config.fallbacks ? { fallbacks: config.fallbacks } : {}),
          },
          timeouts: config.timeoutMs ? { attemptMs: config.timeoutMs, deadlineMs: Math.max(90_000, config.timeoutMs) } : undefined,
          retry: config.maxRetries !== undefined ? { maxRetries: config.maxRetries } : undefined,
          maxTokens: { cap: 1024 },
          profiles: {
            development: { retry: { initialDelayMs: 200 } },
          },
        }),
      ],
      controllers: [ChatController, HealthController],
      providers: [
        { provide: SAMPLE_CONFIG, useValue: config },
        { provide: APP_GUARD, useClass: BearerAuthGuard },
        { provide: APP_FILTER, useClass: OpenAIExceptionFilter },
      ],
    };
  }
}
