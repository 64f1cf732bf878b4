export * from './model-names.js';
export * from './model-policy.js';
