export * from './usage.service.js';
export * from './usage.hook.js';
