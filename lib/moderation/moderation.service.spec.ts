import { afterEach, describe, expect, it, vi } from 'vitest';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import type {
  OpenAIModuleOptions,
  ResolvedOpenAIOptions,
} from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import type { CallPipeline } from '../call/call-pipeline.js';
import { MemoryStore } from '../storage/memory.store.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import { ModerationUnavailableException } from './moderation.exceptions.js';
import { ModerationService } from './moderation.service.js';

const CATEGORIES = ['harassment', 'self-harm', 'violence'];

/** A moderations result as the endpoint gives it: triggered categories 0.95 and true, others 0.0001. */
function resultFor(text: string) {
  const hit = new Set<string>();
  if (text.includes('FLAG_ME')) hit.add('harassment');
  if (text.includes('HIT')) hit.add('violence');
  if (text.includes('MILD')) hit.add('self-harm');
  const categories = Object.fromEntries(CATEGORIES.map((c) => [c, hit.has(c)]));
  const category_scores = Object.fromEntries(
    CATEGORIES.map((c) => [c, hit.has(c) ? (c === 'self-harm' ? 0.4 : 0.95) : 0.0001]),
  );
  return { flagged: hit.size > 0, categories, category_scores };
}

function setup(options: OpenAIModuleOptions = {}, store: OpenAIStore = new MemoryStore()) {
  const resolved: ResolvedOpenAIOptions = resolveOpenAIOptions({
    environment: 'development',
    apiKey: 'sk-test-0000000000000000',
    logging: { config: false },
    ...options,
  });
  const calls: string[][] = [];
  let failure: Error | undefined;
  const openai = {
    moderate: vi.fn(async (input: string[]) => {
      calls.push([...input]);
      if (failure) throw failure;
      return { response: { results: input.map(resultFor) } };
    }),
  };
  const metrics = new OpenAIMetricsService(resolved);
  const service = new ModerationService(openai as unknown as CallPipeline, store, resolved, metrics);
  return { service, openai, calls, metrics, fail: (e?: Error) => (failure = e) };
}

afterEach(() => vi.restoreAllMocks());

describe('ModerationService.check', () => {
  it('checks output text the same way, counted as output in the metrics', async () => {
    const { service, calls, metrics } = setup();
    await expect(service.check(['FLAG_ME'], 'output')).resolves.toEqual({
      flagged: true,
      categories: ['harassment'],
    });
    expect(calls).toEqual([['FLAG_ME']]);
    expect(await metrics.metrics()).toMatch(
      /moderation_checks_total\{direction="output",outcome="flagged"\} 1/,
    );
  });

  it('ignores empty and blank texts; with nothing left, makes no call', async () => {
    const { service, calls } = setup();
    await expect(service.check(['', '  ', '\n'], 'input')).resolves.toEqual({
      flagged: false,
      categories: [],
    });
    expect(calls).toHaveLength(0);
  });

  it('sends every distinct text in one call (array input) and names the flagged categories, sorted and unique', async () => {
    const { service, calls } = setup();
    const v = await service.check(['HIT one', 'fine', 'FLAG_ME', 'HIT one', 'FLAG_ME HIT'], 'input');
    expect(calls).toEqual([['HIT one', 'fine', 'FLAG_ME', 'FLAG_ME HIT']]);
    expect(v).toEqual({ flagged: true, categories: ['harassment', 'violence'] });
  });

  it('caches verdicts per text: a second check of the same texts makes no call; only new texts are sent', async () => {
    const { service, calls } = setup();
    await service.check(['a', 'FLAG_ME'], 'input');
    expect(await service.check(['FLAG_ME', 'a'], 'input')).toEqual({
      flagged: true,
      categories: ['harassment'],
    });
    await service.check(['a', 'b'], 'input');
    expect(calls).toEqual([['a', 'FLAG_ME'], ['b']]);
  });

  it('maps cached and fresh results back to the right texts', async () => {
    const { service } = setup();
    await service.check(['clean 1', 'clean 2'], 'input');
    // cached, fresh (flagged), cached
    expect(await service.check(['clean 1', 'HIT', 'clean 2'], 'input')).toEqual({
      flagged: true,
      categories: ['violence'],
    });
    expect(await service.check(['clean 2', 'clean 1'], 'input')).toEqual({ flagged: false, categories: [] });
  });

  it('cacheTtlMs 0: every check calls the endpoint', async () => {
    const { service, calls } = setup({ moderation: { cacheTtlMs: 0 } });
    await service.check(['same'], 'input');
    await service.check(['same'], 'input');
    expect(calls).toHaveLength(2);
  });

  it('the cache key is a hash: the store never holds the text', async () => {
    const store = new MemoryStore();
    const set = vi.spyOn(store, 'set');
    const { service } = setup({}, store);
    await service.check(['my secret prompt'], 'input');
    expect(set).toHaveBeenCalledTimes(1);
    const [key, value] = set.mock.calls[0];
    expect(key).toMatch(/^mod:omni-moderation-latest:[A-Za-z0-9_-]{43}$/);
    expect(`${key}${value}`).not.toContain('secret');
  });

  it('a store that fails or holds garbage is a cache miss, not an error', async () => {
    const store = new MemoryStore();
    vi.spyOn(store, 'get').mockRejectedValueOnce(new Error('store down')).mockResolvedValueOnce('{not json');
    vi.spyOn(store, 'set').mockRejectedValue(new Error('store down'));
    const { service, calls } = setup({}, store);
    expect(await service.check(['FLAG_ME'], 'input')).toMatchObject({ flagged: true });
    expect(await service.check(['FLAG_ME'], 'input')).toMatchObject({ flagged: true });
    expect(calls).toHaveLength(2);
  });

  it('thresholds: stricter than OpenAI flags a category it did not; looser lets a flagged one through', async () => {
    const { service } = setup({ moderation: { cacheTtlMs: 0 } });
    expect(await service.check(['MILD'], 'input')).toEqual({ flagged: true, categories: ['self-harm'] });
    expect(await service.check(['MILD'], 'input', { thresholds: { 'self-harm': 0.5 } })).toEqual({
      flagged: false,
      categories: [],
    });
    expect(await service.check(['calm'], 'input', { thresholds: { violence: 0.0001 } })).toEqual({
      flagged: true,
      categories: ['violence'],
    });
    expect(await service.check(['FLAG_ME'], 'input', { thresholds: { harassment: 0.951 } })).toEqual({
      flagged: false,
      categories: [],
    });
    expect(await service.check(['FLAG_ME'], 'input', { thresholds: { harassment: 0.95 } })).toEqual({
      flagged: true,
      categories: ['harassment'],
    });
  });

  it('module thresholds apply, and a check overrides them per category', async () => {
    const { service } = setup({
      moderation: { cacheTtlMs: 0, thresholds: { harassment: 0.99, violence: 0.99 } },
    });
    expect(await service.check(['FLAG_ME HIT'], 'input')).toEqual({ flagged: false, categories: [] });
    expect(await service.check(['FLAG_ME HIT'], 'input', { thresholds: { violence: 0.5 } })).toEqual({
      flagged: true,
      categories: ['violence'],
    });
  });

  it('categories: only those count', async () => {
    const { service } = setup();
    expect(await service.check(['FLAG_ME HIT'], 'input', { categories: ['violence'] })).toEqual({
      flagged: true,
      categories: ['violence'],
    });
    expect(await service.check(['FLAG_ME'], 'input', { categories: ['violence'] })).toEqual({
      flagged: false,
      categories: [],
    });
  });

  it('overrides left undefined keep the module settings (categories, onError)', async () => {
    const { service, fail } = setup({ moderation: { categories: ['violence'], onError: 'fail-open' } });
    expect(
      await service.check(['FLAG_ME'], 'input', {
        categories: undefined,
        thresholds: undefined,
        onError: undefined,
      }),
    ).toEqual({ flagged: false, categories: [] });
    fail(new Error('boom'));
    await expect(service.check(['new text'], 'input', { onError: undefined })).resolves.toMatchObject({
      flagged: false,
      failedOpen: true,
    });
  });

  it('fail-closed: an endpoint failure is a 503 moderation_unavailable keeping the cause; nothing is cached', async () => {
    const { service, fail, calls } = setup({ moderation: { onError: 'fail-closed' } });
    const cause = new Error('upstream 500');
    fail(cause);
    const err = await service.check(['x'], 'input').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModerationUnavailableException);
    expect((err as ModerationUnavailableException).getStatus()).toBe(503);
    expect((err as ModerationUnavailableException).body).toMatchObject({ error: 'moderation_unavailable' });
    expect((err as Error).cause).toBe(cause);
    fail(undefined);
    await service.check(['x'], 'input');
    expect(calls).toHaveLength(2);
  });

  it('fail-open: the text passes with failedOpen, a warning and an error metric; a check can choose its policy', async () => {
    const { service, fail, metrics } = setup({ moderation: { onError: 'fail-closed' } });
    fail(new Error('timeout'));
    const warn = vi
      .spyOn((service as unknown as { logger: { warn: (m: string) => void } }).logger, 'warn')
      .mockImplementation(() => undefined);
    await expect(service.check(['y'], 'output', { onError: 'fail-open' })).resolves.toEqual({
      flagged: false,
      categories: [],
      failedOpen: true,
    });
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn.mock.calls[0][0]).toMatch(/output let through \(fail-open\)/);
    expect(warn.mock.calls[0][0]).not.toContain('y ');
    expect(await metrics.metrics()).toMatch(
      /openai_moderation_checks_total\{direction="output",outcome="error"\} 1/,
    );
  });

  it('calls the endpoint with the moderation timeout, one retry and no fallbacks', async () => {
    const { service, openai } = setup({ moderation: { timeoutMs: 1234 } });
    await service.check(['t'], 'input');
    expect(openai.moderate).toHaveBeenCalledWith(
      ['t'],
      expect.objectContaining({ attemptTimeoutMs: 1234, maxRetries: 1, fallbacks: false }),
    );
  });

  it('counts checks and flagged categories by direction', async () => {
    const { service, metrics } = setup();
    await service.check(['FLAG_ME HIT'], 'output');
    await service.check(['clean'], 'input');
    const text = await metrics.metrics();
    expect(text).toMatch(/openai_moderation_flags_total\{direction="output",category="harassment"\} 1/);
    expect(text).toMatch(/openai_moderation_flags_total\{direction="output",category="violence"\} 1/);
    expect(text).toMatch(/openai_moderation_checks_total\{direction="input",outcome="clean"\} 1/);
  });
});
