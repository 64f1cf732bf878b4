export * from './rate-limit.exceptions.js';
export * from './rate-limit.service.js';
export * from './token-limit.hook.js';
export * from './openai-throttler.guard.js';
export * from './openai-throttler.storage.js';
