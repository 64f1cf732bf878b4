export * from './safety-identifier.js';
