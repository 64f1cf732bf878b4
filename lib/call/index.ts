export * from './upstream-call.js';
