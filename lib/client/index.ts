export * from './create-openai-client.js';
export * from './sse-completion.js';
