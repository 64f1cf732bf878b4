/**
 * `nestjs-openai-production/testing`: a wire-level fake OpenAI server for end-to-end tests with the real `openai` SDK.
 */
export {
  FakeOpenAIServer,
  countChatPromptTokens,
  countTextTokens,
  defaultReply,
  DEFAULT_FAKE_MODELS,
  DEFAULT_MODERATION_TRIGGERS,
  MODERATION_CATEGORIES,
} from './fake-openai.server.js';
export type {
  CountableChatMessage,
  FakeChatRequest,
  FakeOpenAIServerOptions,
  FakeReplyFn,
  FakeUsageRequest,
  FaultRule,
  ModerationCategory,
  RecordedRequest,
} from './fake-openai.server.js';
