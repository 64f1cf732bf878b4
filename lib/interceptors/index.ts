export * from './request-context.interceptor.js';
