export * from './chat-request.schema.js';
