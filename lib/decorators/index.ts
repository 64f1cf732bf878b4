export * from './inject-openai-store.decorator.js';
export * from './inject-openai.decorator.js';
