import { ConfigurableModuleBuilder } from '@nestjs/common';
import type {
  OpenAIModuleExtras,
  OpenAIModuleOptions,
} from './interfaces/openai-module-options.interface.js';

export const {
  ConfigurableModuleClass: OpenAIConfigurableModule,
  MODULE_OPTIONS_TOKEN: OPENAI_MODULE_OPTIONS,
  OPTIONS_TYPE: OPENAI_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: OPENAI_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<OpenAIModuleOptions>({ moduleName: 'OpenAI' })
  .setClassMethodName('forRoot')
  .setFactoryMethodName('createOpenAIOptions')
  .setExtras<OpenAIModuleExtras>({ isGlobal: false }, (definition, extras) => ({
    ...definition,
    global: extras.isGlobal,
  }))
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
