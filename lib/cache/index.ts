export * from './response-cache.service.js';
