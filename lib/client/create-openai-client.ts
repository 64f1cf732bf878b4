import OpenAI from 'openai';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { ApiKeySource, keyRefreshFetch } from './api-key-source.js';
import { sseCompletionFetch } from './sse-completion.js';

/**
 * The SDK client configured from resolved options. Its own retries are off (`maxRetries: 0`): the
 * service is the only retry owner. A function `apiKey` is wrapped in an `ApiKeySource`: its key is
 * reused for `apiKeyCacheMs`, and an upstream 401 refreshes it once (for all the requests that failed
 * with the old key) and sends each of those requests once more with the new key, so a rotated key takes
 * effect without a restart.
 */
export function createOpenAIClient(options: ResolvedOpenAIOptions): OpenAI {
  const source =
    typeof options.apiKey === 'function'
      ? new ApiKeySource(options.apiKey, options.apiKeyCacheMs ?? 300_000)
      : undefined;
  const fetch = sseCompletionFetch();
  return new OpenAI({
    apiKey: source ? () => source.get() : options.apiKey,
    organization: options.organization ?? null,
    project: options.project ?? null,
    baseURL: options.baseURL,
    defaultHeaders: options.defaultHeaders,
    maxRetries: 0,
    timeout: options.timeouts.attemptMs,
    fetch: source ? keyRefreshFetch(source, fetch) : fetch,
  });
}
