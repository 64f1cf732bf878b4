/**
 * `nestjs-openai-production/testing`: a wire-level fake OpenAI server for end-to-end tests with the real `openai` SDK.
 */
export {
  FakeOpenAIServer,
  countChatPromptTokens,
  countTextTokens,
  defaultReply,
  DEFAULT_FAKE_MODELS,
  DEFAULT_FAKE_RATE_LIMITS,
  DEFAULT_MODEL_ALIASES,
  DEFAULT_MODERATION_TRIGGERS,
  MODERATION_CATEGORIES,
  TOOL_CALL_TRIGGER,
} from './fake-openai.server.js';
export type {
  CountableChatMessage,
  FakeChatRequest,
  FakeOpenAIServerOptions,
  FakeRateLimits,
  FakeReplyFn,
  FakeUsageRequest,
  FaultRule,
  ModerationCategory,
  RecordedRequest,
} from './fake-openai.server.js';
