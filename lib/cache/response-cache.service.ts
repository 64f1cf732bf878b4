import type { UpstreamEndpoint } from '../call/upstream-call.js';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { createHash } from 'node:crypto';
import type OpenAI from 'openai';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import { keyPart, type OpenAIStore } from '../storage/openai-store.interface.js';

/** Fields that never make two requests different answers (the hashed end user goes upstream in these). */
const IDENTITY_FIELDS = new Set(['safety_identifier', 'user']);

/** JSON with sorted keys, so equal bodies give equal keys whatever their key order. */
function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * Response cache for deterministic chat requests (`temperature: 0`, one choice, no tools): an identical
 * request within `cache.ttlMs` is answered from the shared store without an upstream call, so it costs
 * nothing and uses no token limit or budget (it still counts against request limits, which run before).
 * Keys are a SHA-256 of the request as sent upstream (model after aliases, `max_tokens` after the cap),
 * shared by all users unless `cache.perUser`.
 */
@Injectable()
export class ResponseCacheService {
  private readonly logger = new Logger('OpenAIResponseCache');

  constructor(
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    private readonly metrics: OpenAIMetricsService,
  ) {}

  /**
   * The cache key of an upstream body (chat completions or responses), or `undefined` when the request
   * is not cacheable.
   */
  keyFor(
    body: Record<string, unknown>,
    user: string | undefined,
    endpoint: UpstreamEndpoint = 'chat.completions',
  ): string | undefined {
    if (endpoint !== 'chat.completions' && endpoint !== 'responses') return undefined;
    const { ttlMs, perUser } = this.options.cache;
    if (
      ttlMs <= 0 ||
      body.temperature !== 0 ||
      (body.n != null && body.n !== 1) ||
      body.tools != null ||
      body.stream
    )
      return undefined;
    const relevant = Object.fromEntries(Object.entries(body).filter(([k]) => !IDENTITY_FIELDS.has(k)));
    const hash = createHash('sha256').update(stableJson(relevant)).digest('base64url');
    const ns = endpoint === 'responses' ? 'cache:responses' : 'cache:chat';
    return perUser ? `${ns}:${keyPart(user ?? '-')}:${hash}` : `${ns}:${hash}`;
  }

  /** The cached reply (a chat completion or a response) for `key`, if any. A store failure is a miss. */
  async get<T = OpenAI.Chat.Completions.ChatCompletion>(key: string): Promise<T | undefined> {
    let raw: string | undefined;
    try {
      raw = await this.store.get(key);
    } catch {
      raw = undefined;
    }
    if (raw) {
      try {
        const completion = JSON.parse(raw) as T;
        this.metrics.cache('hit');
        return completion;
      } catch {
        // An entry that does not parse is a miss.
      }
    }
    this.metrics.cache('miss');
    return undefined;
  }

  /** Stores a completion (entries over `cache.maxEntryBytes` are skipped). A store failure is logged, not thrown. */
  async set(key: string, completion: unknown): Promise<void> {
    const raw = JSON.stringify(completion);
    if (Buffer.byteLength(raw) > this.options.cache.maxEntryBytes) return;
    try {
      await this.store.set(key, raw, this.options.cache.ttlMs);
    } catch (err) {
      this.logger.warn(`storing a response failed: ${(err as Error)?.message ?? String(err)}`);
    }
  }
}
