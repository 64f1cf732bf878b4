import {
  Inject,
  Injectable,
  Logger,
  Module,
  Optional,
  RequestMethod,
  type MiddlewareConsumer,
  type NestModule,
  type OnApplicationShutdown,
  type OnModuleInit,
  type Provider,
} from '@nestjs/common';
import { APP_INTERCEPTOR } from '@nestjs/core';
import { createOpenAIClient } from './client/create-openai-client.js';
import { describeOptions } from './options/describe-options.js';
import { resolveOpenAIOptions } from './options/resolve-options.js';
import type {
  OpenAIModuleOptions,
  ResolvedOpenAIOptions,
} from './options/openai-module-options.interface.js';
import { RequestContextInterceptor } from './request-context/request-context.interceptor.js';
import { RequestContextMiddleware } from './request-context/request-context.middleware.js';
import {
  OPENAI_REQUEST_CONTEXT_ROUTES,
  type RequestContextRoutes,
} from './request-context/request-context-routes.js';
import {
  OPENAI_CALL_HOOKS,
  OPENAI_CLIENT,
  OPENAI_RESOLVED_OPTIONS,
  OPENAI_STORE,
} from './openai.constants.js';
import { OpenAIHealthService } from './health/openai-health.service.js';
import { createStore } from './storage/create-store.js';
import { ResilientStore } from './storage/resilient.store.js';
import { BudgetService } from './budget/budget.service.js';
import { OpenAIMetricsService } from './metrics/openai-metrics.service.js';
import { PricingService } from './pricing/pricing.service.js';
import { UsageHook } from './usage/usage.hook.js';
import { UsageService } from './usage/usage.service.js';
import { ModerationPipe } from './moderation/moderation.pipe.js';
import { ModerationService } from './moderation/moderation.service.js';
import { ChatRequestPipe } from './endpoints/chat-completions/chat-request.pipe.js';
import { ResponseCacheService } from './cache/response-cache.service.js';
import type { OpenAIStore } from './storage/openai-store.interface.js';
import { OpenAIThrottlerGuard } from './throttling/openai-throttler.guard.js';
import { OpenAIThrottlerStorage } from './throttling/openai-throttler.storage.js';
import { RateLimitService } from './throttling/rate-limit.service.js';
import { TokenLimitHook } from './throttling/token-limit.hook.js';
import { OPENAI_MODULE_OPTIONS, OpenAIConfigurableModule } from './openai.module-definition.js';
import { OpenAIService } from './openai.service.js';
import { CallPipeline } from './call/call-pipeline.js';
import { ResponsesRequestPipe } from './endpoints/responses/responses-request.pipe.js';
import { RequestIdentityService } from './identity/request-identity.service.js';
import { RefusalRecorder } from './call/refusal.recorder.js';
import { OpenAIBatchService } from './batch/batch.service.js';
import { CircuitBreakerService } from './breaker/circuit-breaker.service.js';
import { ConcurrencyLimitHook } from './concurrency/concurrency-limit.hook.js';
import { PacingService } from './pacing/pacing.service.js';

/**
 * Connects the store's outage transitions to the metrics, and on shutdown writes pending usage and
 * budget alerts before closing the store (and a Redis client it opened).
 */
@Injectable()
class OpenAIStoreLifecycle implements OnModuleInit, OnApplicationShutdown {
  constructor(
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    private readonly metrics: OpenAIMetricsService,
    private readonly usage: UsageService,
    private readonly budgets: BudgetService,
    private readonly openai: OpenAIService,
  ) {}
  onModuleInit(): void {
    if (this.store instanceof ResilientStore)
      this.store.onTransition = (degraded) => this.metrics.storageTransition(this.store.kind, degraded);
  }
  async onApplicationShutdown(): Promise<void> {
    await this.openai.flush();
    await this.usage.flush();
    await this.budgets.flush();
    await this.store.close();
  }
}

/** The services users inject (and the guard and pipes they use by class). */
const exported = [
  OpenAIService,
  RequestIdentityService,
  RefusalRecorder,
  RateLimitService,
  OpenAIThrottlerStorage,
  OpenAIThrottlerGuard,
  OpenAIHealthService,
  PricingService,
  OpenAIMetricsService,
  UsageService,
  BudgetService,
  ModerationService,
  ModerationPipe,
  ChatRequestPipe,
  ResponsesRequestPipe,
  ResponseCacheService,
  OpenAIBatchService,
];

const providers: Provider[] = [
  {
    provide: OPENAI_RESOLVED_OPTIONS,
    inject: [OPENAI_MODULE_OPTIONS],
    useFactory: (options: OpenAIModuleOptions): ResolvedOpenAIOptions => {
      const resolved = resolveOpenAIOptions(options);
      if (resolved.logging.config) {
        new Logger('OpenAIModule').log(
          `effective configuration: ${JSON.stringify(describeOptions(resolved))}`,
        );
      }
      return resolved;
    },
  },
  { provide: OPENAI_CLIENT, inject: [OPENAI_RESOLVED_OPTIONS], useFactory: createOpenAIClient },
  { provide: OPENAI_STORE, inject: [OPENAI_RESOLVED_OPTIONS], useFactory: createStore },
  OpenAIStoreLifecycle,
  TokenLimitHook,
  UsageHook,
  CircuitBreakerService,
  PacingService,
  ConcurrencyLimitHook,
  CallPipeline,
  ...exported,
  // Order matters: the hooks that can refuse (in-flight cap, token limits, budgets), the user's own,
  // then the usage ledger (which only settles).
  {
    provide: OPENAI_CALL_HOOKS,
    inject: [ConcurrencyLimitHook, TokenLimitHook, BudgetService, UsageHook, OPENAI_RESOLVED_OPTIONS],
    useFactory: (
      inFlight: ConcurrencyLimitHook,
      tokens: TokenLimitHook,
      budgets: BudgetService,
      usage: UsageHook,
      options: ResolvedOpenAIOptions,
    ) => [inFlight, tokens, budgets, ...options.hooks, usage],
  },
  { provide: APP_INTERCEPTOR, useClass: RequestContextInterceptor },
];

/**
 * OpenAI for a Nest app, with production defaults per environment.
 *
 * @example
 * OpenAIModule.forRootAsync({
 *   isGlobal: true,
 *   imports: [ConfigModule],
 *   inject: [ConfigService],
 *   useFactory: (config: ConfigService) => ({ apiKey: config.getOrThrow('OPENAI_API_KEY') }),
 * })
 */
@Module({
  providers,
  exports: [OPENAI_CLIENT, OPENAI_RESOLVED_OPTIONS, OPENAI_STORE, ...exported],
})
export class OpenAIModule extends OpenAIConfigurableModule implements NestModule {
  constructor(
    @Optional() @Inject(OPENAI_REQUEST_CONTEXT_ROUTES) private readonly routes: RequestContextRoutes = {},
  ) {
    super();
  }

  configure(consumer: MiddlewareConsumer): void {
    const { forRoutes = [{ path: '*', method: RequestMethod.ALL }], exclude = [] } = this.routes ?? {};
    const middleware = consumer.apply(RequestContextMiddleware);
    (exclude.length ? middleware.exclude(...exclude) : middleware).forRoutes(...forRoutes);
  }
}
