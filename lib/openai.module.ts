import { Logger, Module, RequestMethod, type MiddlewareConsumer, type NestModule, type Provider } from '@nestjs/common';
import { APP_INTERCEPTOR } from '@nestjs/core';
import { createOpenAIClient } from './client/create-openai-client.js';
import { describeOptions } from './config/describe-options.js';
import { resolveOpenAIOptions } from './config/resolve-options.js';
import type { OpenAIModuleOptions, ResolvedOpenAIOptions } from './interfaces/openai-module-options.interface.js';
import { RequestContextInterceptor } from './interceptors/request-context.interceptor.js';
import { RequestContextMiddleware } from './middleware/request-context.middleware.js';
import { OPENAI_CALL_HOOKS, OPENAI_CLIENT, OPENAI_RESOLVED_OPTIONS } from './openai.constants.js';
import { OPENAI_MODULE_OPTIONS, OpenAIConfigurableModule } from './openai.module-definition.js';
import { OpenAIService } from './openai.service.js';

const providers: Provider[] = [
  {
    provide: OPENAI_RESOLVED_OPTIONS,
    inject: [OPENAI_MODULE_OPTIONS],
    useFactory: (options: OpenAIModuleOptions): ResolvedOpenAIOptions => {
      const resolved = resolveOpenAIOptions(options);
      if (resolved.logging.config) {
        new Logger('OpenAIModule').log(`effective configuration: ${JSON.stringify(describeOptions(resolved))}`);
      }
      return resolved;
    },
  },
  { provide: OPENAI_CLIENT, inject: [OPENAI_RESOLVED_OPTIONS], useFactory: createOpenAIClient },
  { provide: OPENAI_CALL_HOOKS, useValue: [] },
  OpenAIService,
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
  exports: [OpenAIService, OPENAI_CLIENT, OPENAI_RESOLVED_OPTIONS],
})
export class OpenAIModule extends OpenAIConfigurableModule implements NestModule {
  configure(consumer: MiddlewareConsumer): void {
    consumer.apply(RequestContextMiddleware).forRoutes({ path: '*', method: RequestMethod.ALL });
  }
}
