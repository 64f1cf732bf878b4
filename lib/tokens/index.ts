export * from './token-counter.js';
