import OpenAI from 'openai';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { sseCompletionFetch } from './sse-completion.js';

/**
 * The SDK client configured from resolved options. Its own retries are off (`maxRetries: 0`): the
 * service is the only retry owner. A function `apiKey` is passed through, so the SDK asks it for the key
 * before each request and a rotated key takes effect without a restart.
 */
export function createOpenAIClient(options: ResolvedOpenAIOptions): OpenAI {
  return new OpenAI({
    apiKey: options.apiKey,
    organization: options.organization ?? null,
    project: options.project ?? null,
    baseURL: options.baseURL,
    defaultHeaders: options.defaultHeaders,
    maxRetries: 0,
    timeout: options.timeouts.attemptMs,
    fetch: sseCompletionFetch(),
  });
}
