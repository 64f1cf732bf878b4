export * from './openai-module-options.interface.js';
