import type { OpenAIProfileOptions } from './openai-module-options.interface.js';

/** Defaults shared by every environment. */
export const BASE_DEFAULTS = {
  apiKeyCacheMs: 300_000,
  defaultHeaders: {},
  models: {
    default: 'gpt-4o-mini-2024-07-18',
    aliases: {},
    pinning: 'warn',
    requested: 'any',
    fallbacks: [],
    moderation: 'omni-moderation-latest',
    embedding: 'text-embedding-3-small',
  },
  maxTokens: { cap: 1024, overCap: 'clamp' },
  timeouts: { attemptMs: 30_000, deadlineMs: 90_000 },
  retry: { maxRetries: 2, initialDelayMs: 500, maxDelayMs: 8_000, maxRetryAfterMs: 60_000 },
  logging: { prompts: false, config: true, calls: true, redact: [] },
  identity: { field: 'safety_identifier', salt: '', promptCacheKey: false },
  limits: { requests: [], tokens: [], maxInFlight: 0 },
  storage: { type: 'memory', onFailure: 'memory', instances: 1, connectTimeoutMs: 5_000 },
  pricing: { models: {} },
  usage: {
    enabled: true,
    dailyRetentionDays: 35,
    monthlyRetentionDays: 400,
    flushIntervalMs: 1_000,
    maxPendingRecords: 100_000,
  },
  budgets: {
    user: {},
    project: {},
    alertThresholds: [0.5, 0.8, 1],
    unpricedModels: 'reject',
    reserveTier: 'requested',
    projectLeases: { enabled: true, maxUsd: 1, perCallBelowUsd: 1, ttlMs: 60_000 },
  },
  metrics: {
    enabled: true,
    prefix: 'openai_',
    latencyBuckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    overheadHeader: false,
  },
  moderation: {
    enabled: true,
    onError: 'fail-open',
    timeoutMs: 5_000,
    cacheTtlMs: 3_600_000,
    thresholds: {},
    roles: ['user'],
    safeMessage: "Sorry, I can't help with that.",
    streamCheckIntervalChars: 400,
    via: 'endpoint',
  },
  input: { maxMessages: 50, maxChars: 32_000, maxPromptTokens: 8_000 },
  cache: { ttlMs: 0, perUser: false, maxEntryBytes: 262_144 },
  breaker: { failures: 0, cooldownMs: 30_000, syncIntervalMs: 5_000 },
  pacing: { mode: 'off', minRemainingRequests: 0, minRemainingTokens: 0, syncIntervalMs: 5_000 },
} satisfies OpenAIProfileOptions;

/**
 * What differs by environment. Staging mirrors production so that what passes there passes in
 * production. An environment not listed here (one only the user's `profiles` define) starts from the
 * production column: the safe side.
 */
export const ENVIRONMENT_DEFAULTS: Record<string, OpenAIProfileOptions> = {
  development: { models: { pinning: 'warn' } },
  test: { models: { pinning: 'warn' }, logging: { config: false } },
  staging: {
    models: { pinning: 'enforce', requested: 'configured' },
    moderation: { onError: 'fail-closed' },
    breaker: { failures: 5 },
    pacing: { mode: 'queue' },
  },
  production: {
    models: { pinning: 'enforce', requested: 'configured' },
    logging: { prompts: false },
    moderation: { onError: 'fail-closed' },
    breaker: { failures: 5 },
    pacing: { mode: 'queue' },
  },
};

/** Environments whose rules forbid prompt logging whatever the options say. */
export const NO_PROMPT_LOGGING_ENVIRONMENTS = new Set(['production']);
