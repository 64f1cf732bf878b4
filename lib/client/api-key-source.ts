import { Logger } from '@nestjs/common';
import { fingerprintKey } from '../logging/redact.js';
import type { ApiKeyProvider } from '../options/openai-module-options.interface.js';

/**
 * The key of an async key provider, cached for `cacheMs` and refreshed at once after an upstream 401:
 * single-flight, so concurrent requests (a burst, or every call that failed with a revoked key) ask the
 * provider once, not once each. A refresh for a key that was already replaced returns the new key
 * without asking again.
 */
export class ApiKeySource {
  private readonly logger = new Logger('OpenAI');
  private key?: string;
  private fetchedAt = 0;
  private pending?: Promise<string>;

  constructor(
    private readonly provider: ApiKeyProvider,
    private readonly cacheMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** The current key: cached while fresh, else asked of the provider (once for concurrent callers). */
  get(): Promise<string> {
    if (this.key !== undefined && this.cacheMs > 0 && this.now() - this.fetchedAt < this.cacheMs)
      return Promise.resolve(this.key);
    return this.ask();
  }

  /**
   * The key to retry a request with after the upstream refused `rejected` (401): the provider is asked
   * once however many requests failed with that key; a key already replaced is not asked for again.
   */
  async refresh(rejected: string): Promise<string> {
    if (this.pending) return this.pending;
    if (this.key !== undefined && this.key !== rejected) return this.key;
    const key = await this.ask();
    this.logger.warn({
      msg: 'api key refreshed after an upstream 401',
      rejected: fingerprintKey(rejected),
      key: fingerprintKey(key),
      changed: key !== rejected,
    });
    return key;
  }

  private ask(): Promise<string> {
    this.pending ??= this.provider().then(
      (key) => {
        this.key = key;
        this.fetchedAt = this.now();
        this.pending = undefined;
        return key;
      },
      (err: unknown) => {
        this.pending = undefined;
        // Say that the secret store failed (not the key): on-call would otherwise chase a bad key. The
        // provider's message may quote a secret: only the error's name is logged.
        this.logger.error({
          msg: 'the API key provider failed',
          error: err instanceof Error ? err.name : typeof err,
        });
        throw err;
      },
    );
    return this.pending;
  }
}

/** Bodies fetch can send again (a stream cannot: it was consumed by the first send). */
function resendable(body: RequestInit['body']): boolean {
  return body == null || typeof body === 'string' || !(body instanceof ReadableStream);
}

/**
 * Wraps `fetch` so that a 401 to a request authenticated with the source's key refreshes the key (see
 * `ApiKeySource.refresh`) and sends the request once more with the new one. Below the SDK, so every
 * endpoint (and calls made on the injected client) gets it; the retry is part of the same attempt.
 */
export function keyRefreshFetch(source: ApiKeySource, base: typeof fetch): typeof fetch {
  return async (input, init) => {
    const res = await base(input, init);
    if (res.status !== 401 || !resendable(init?.body)) return res;
    const headers = new Headers(init?.headers);
    const sent = /^Bearer (.+)$/i.exec(headers.get('authorization') ?? '')?.[1];
    if (!sent) return res;
    let key: string;
    try {
      key = await source.refresh(sent);
    } catch {
      return res;
    }
    if (key === sent) return res;
    await res.body?.cancel().catch(() => undefined);
    headers.set('authorization', `Bearer ${key}`);
    return base(input, { ...init, headers });
  };
}
