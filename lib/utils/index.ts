export * from './deep-merge.js';
export * from './http.js';
export * from './is-record.js';
