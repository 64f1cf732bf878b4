export * from './chat-request.pipe.js';
