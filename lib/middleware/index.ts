export * from './request-context.middleware.js';
export * from './request-context-routes.js';
