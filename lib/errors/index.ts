export * from './openai-production.error.js';
export * from './openai-config.error.js';
export * from './openai-http.exceptions.js';
