export * from './openai-metrics.service.js';
