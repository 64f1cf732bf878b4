import type { OpenAIModuleOptions } from '../../lib/index.js';

/** The model every call uses (a dated snapshot, so pinning passes in production). */
export const MODEL = 'gpt-4o-mini-2024-07-18';
/** The fixed request body of every measured call. */
export const BODY = '{"messages":[{"role":"user","content":"Say hello"}]}';
/** The end user the limits, budgets and usage apply to. */
export const USER = 'bench-user';
/** The fake upstream's answer to BODY, checked once per variant. */
export const EXPECTED_CONTENT = 'Echo: Say hello';

export type Pipeline = 'bare' | 'limited';

/**
 * Module options of the bench. `bare`: no limits, no budgets, no usage ledger (the service pipeline
 * alone: model policy, max_tokens cap, input caps and prompt tokens, hashed user, timeouts, metrics).
 * `limited`: request limit (used by the guard only), token limit, user and project budgets and the usage
 * ledger, all sized so that nothing is ever refused. Logs off; metrics on (the default).
 */
export function benchOptions(pipeline: Pipeline, baseURL: string, redisUrl?: string): OpenAIModuleOptions {
  const common: OpenAIModuleOptions = {
    environment: 'production',
    apiKey: 'sk-bench-0000000000000000000000000000',
    baseURL,
    models: { default: MODEL },
    logging: { calls: false, config: false },
  };
  if (pipeline === 'bare') return { ...common, usage: { enabled: false } };
  return {
    ...common,
    limits: {
      requests: [{ name: 'minute', limit: 10_000_000, ttl: 60_000 }],
      tokens: [{ name: 'minute', limit: 1_000_000_000, ttl: 60_000 }],
    },
    budgets: { user: { dailyUsd: 1_000_000 }, project: { monthlyUsd: 100_000_000 } },
    usage: { enabled: true },
    // fail-closed: a Redis problem shows up as errors, never as a silent fallback to memory.
    storage: redisUrl
      ? { type: 'redis', redis: { url: redisUrl }, onFailure: 'fail-closed' }
      : { type: 'memory' },
  };
}
