export * from './chat-stream-sse.js';
