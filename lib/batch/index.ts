export * from './batch.service.js';
export type * from './batch.types.js';
