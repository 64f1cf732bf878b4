export * from './deep-merge.js';
export * from './http.js';
