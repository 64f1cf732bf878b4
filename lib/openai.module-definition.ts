import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { OpenAIModuleExtras, OpenAIModuleOptions } from './interfaces/openai-module-options.interface.js';

export const {
  ConfigurableModuleClass: OpenAIConfigurableModule,
  MODULE_OPTIONS_TOKEN: OPENAI_MODULE_OPTIONS,
  OPTIONS_TYPE: OPENAI_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: OPENAI_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<OpenAIModuleOptions>({ moduleName: 'OpenAI' })
  .setClassMethodName('forRoot')
  .setFactoryMethodName('createOpenAIOptions')
  .setExtras<OpenAIModuleExtras>({ isGlobal: false }, (definition, extras) => ({ ...definition, global: extras.isGlobal }))
  .build();

/** Argument of `OpenAIModule.forRoot()`. */
export type OpenAIModuleForRootOptions = typeof OPENAI_OPTIONS_TYPE;
/** Argument of `OpenAIModule.forRootAsync()`: `imports`, `inject`, and one of `useFactory`, `useClass`, `useExisting`. */
export type OpenAIModuleAsyncOptions = typeof OPENAI_ASYNC_OPTIONS_TYPE;
