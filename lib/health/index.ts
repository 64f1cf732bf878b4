export * from './openai-health.service.js';
