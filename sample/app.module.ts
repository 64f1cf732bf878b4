import { Module, type DynamicModule } from '@nestjs/common';
import { APP_FILTER, APP_GUARD } from '@nestjs/core';
import { OpenAIExceptionFilter, OpenAIModule, type OpenAIProfileOptions } from '../lib/index.js';
import { BearerAuthGuard } from './auth/bearer-auth.guard.js';
import { ChatController } from './chat/chat.controller.js';
import { ResponsesController } from './responses/responses.controller.js';
import { HealthController } from './health/health.controller.js';
import { MetricsController } from './metrics/metrics.controller.js';
import { UsageController } from './usage/usage.controller.js';
import type { SampleConfig } from './sample.config.js';
import { SAMPLE_CONFIG } from './sample.tokens.js';

const perMinute = (limit: number) => ({ name: 'minute', limit, ttl: 60_000 });

/** What each environment gets unless an environment variable says otherwise. */
const PROFILES: Record<string, OpenAIProfileOptions> = {
  development: {
    retry: { initialDelayMs: 200 },
    limits: { requests: [perMinute(60)], tokens: [perMinute(100_000)] },
  },
  staging: {
    limits: { requests: [perMinute(20)], tokens: [perMinute(40_000)] },
  },
  production: {
    limits: {
      requests: [perMinute(20), { name: 'day', limit: 500, ttl: 86_400_000 }],
      tokens: [perMinute(40_000)],
    },
  },
};

/** The sample's environment variables, as options that win over the profile's defaults. */
function fromEnvironment(config: SampleConfig): OpenAIProfileOptions {
  return {
    models: {
      ...(config.model ? { default: config.model } : {}),
      ...(config.fallbacks ? { fallbacks: config.fallbacks } : {}),
    },
    ...(config.timeoutMs
      ? { timeouts: { attemptMs: config.timeoutMs, deadlineMs: Math.max(90_000, config.timeoutMs) } }
      : {}),
    ...(config.maxRetries !== undefined ? { retry: { maxRetries: config.maxRetries } } : {}),
    limits: {
      ...(config.rpm ? { requests: [perMinute(config.rpm)] } : {}),
      ...(config.tpm ? { tokens: [perMinute(config.tpm)] } : {}),
      ...(config.maxInFlightPerUser !== undefined ? { maxInFlight: config.maxInFlightPerUser } : {}),
    },
    ...(config.breakerFailures !== undefined || config.breakerCooldownMs !== undefined
      ? {
          breaker: {
            ...(config.breakerFailures !== undefined ? { failures: config.breakerFailures } : {}),
            ...(config.breakerCooldownMs !== undefined ? { cooldownMs: config.breakerCooldownMs } : {}),
          },
        }
      : {}),
    ...(config.cacheTtlS ? { cache: { ttlMs: config.cacheTtlS * 1000 } } : {}),
    ...(config.moderation !== undefined ? { moderation: { enabled: config.moderation } } : {}),
    ...(config.budgetDailyUsd ? { budgets: { user: { dailyUsd: config.budgetDailyUsd } } } : {}),
    ...(config.redisUrl || config.redisClusterNodes
      ? {
          storage: {
            type: 'redis',
            redis: config.redisClusterNodes
              ? { cluster: { nodes: config.redisClusterNodes } }
              : { url: config.redisUrl },
            onFailure: config.environment === 'production' ? 'fail-closed' : 'memory',
          },
        }
      : {}),
  };
}

@Module({})
export class AppModule {
  /** The sample app for one configuration (the tests build it on Express and Fastify with their own). */
  static register(config: SampleConfig): DynamicModule {
    const env = config.environment;
    return {
      module: AppModule,
      imports: [
        OpenAIModule.forRoot({
          isGlobal: true,
          environment: env,
          apiKey: config.apiKey,
          baseURL: config.baseURL,
          maxTokens: { cap: 1024 },
          // The sample accepts every role from the client, so every role is moderated (the library's default is
          // user messages only, for apps that write their own system prompts).
          moderation: { roles: ['system', 'developer', 'user', 'assistant'] },
          profiles: {
            ...PROFILES,
            [env]: [PROFILES[env] ?? {}, fromEnvironment(config)].reduce(mergeProfile),
          },
        }),
      ],
      controllers: [
        ChatController,
        ResponsesController,
        HealthController,
        UsageController,
        MetricsController,
      ],
      providers: [
        { provide: SAMPLE_CONFIG, useValue: config },
        { provide: APP_GUARD, useClass: BearerAuthGuard },
        { provide: APP_FILTER, useClass: OpenAIExceptionFilter },
      ],
    };
  }
}

/** Shallow-per-section merge: each section of `b` is laid over the same section of `a`. */
function mergeProfile(a: OpenAIProfileOptions, b: OpenAIProfileOptions): OpenAIProfileOptions {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    out[k] =
      prev && typeof prev === 'object' && v && typeof v === 'object' && !Array.isArray(v)
        ? { ...prev, ...v }
        : v;
  }
  return out as OpenAIProfileOptions;
}
