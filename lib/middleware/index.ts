export * from './request-context.middleware.js';
