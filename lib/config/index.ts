export * from './describe-options.js';
export * from './environment-defaults.js';
export * from './resolve-options.js';
