export * from './openai-exception.filter.js';
