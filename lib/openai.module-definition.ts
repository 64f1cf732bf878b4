import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { OpenAIModuleExtras, OpenAIModuleOptions } from './options/openai-module-options.interface.js';
import {
  OPENAI_REQUEST_CONTEXT_ROUTES,
  type RequestContextRoutes,
} from './request-context/request-context-routes.js';

/**
 * Module-level settings next to the options (`forRoot({ ..., requestContext })`, also beside
 * `useFactory` in `forRootAsync`). They shape the module itself, so they are neither per environment
 * nor part of the validated options.
 */
export interface OpenAIModuleDefinitionExtras extends OpenAIModuleExtras {
  /**
   * Where the request context middleware and interceptor run (`forRoutes`, `exclude`, as in `nestjs-pino`).
   * @default every route
   */
  requestContext?: RequestContextRoutes;
}

export const {
  ConfigurableModuleClass: OpenAIConfigurableModule,
  MODULE_OPTIONS_TOKEN: OPENAI_MODULE_OPTIONS,
  OPTIONS_TYPE: OPENAI_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: OPENAI_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<OpenAIModuleOptions>({ moduleName: 'OpenAI' })
  .setClassMethodName('forRoot')
  .setFactoryMethodName('createOpenAIOptions')
  .setExtras<OpenAIModuleDefinitionExtras>(
    { isGlobal: false, requestContext: undefined },
    (definition, extras) => ({
      ...definition,
      global: extras.isGlobal,
      providers: [
        ...(definition.providers ?? []),
        { provide: OPENAI_REQUEST_CONTEXT_ROUTES, useValue: extras.requestContext ?? {} },
      ],
    }),
  )
  .build();

/** Argument of `OpenAIModule.forRoot()`. */
export type OpenAIModuleForRootOptions = typeof OPENAI_OPTIONS_TYPE;
/** Argument of `OpenAIModule.forRootAsync()`: `imports`, `inject`, and one of `useFactory`, `useClass`, `useExisting`. */
export type OpenAIModuleAsyncOptions = typeof OPENAI_ASYNC_OPTIONS_TYPE;

/**
 * A class that builds the options, for `forRootAsync({ useClass })` / `({ useExisting })`.
 * @example
 * @Injectable() class OpenAIConfig implements OpenAIOptionsFactory {
 *   constructor(private readonly config: ConfigService) {}
 *   createOpenAIOptions() { return { apiKey: this.config.getOrThrow('OPENAI_API_KEY') }; }
 * }
 */
export interface OpenAIOptionsFactory {
  createOpenAIOptions(): OpenAIModuleOptions | Promise<OpenAIModuleOptions>;
}
