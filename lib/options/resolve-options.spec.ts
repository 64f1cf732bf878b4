import { describe, expect, it } from 'vitest';
import { OpenAIConfigError } from '../errors/openai-config.error.js';
import type { OpenAIModuleOptions } from './openai-module-options.interface.js';
import { describeOptions } from './describe-options.js';
import { BASE_DEFAULTS } from './environment-defaults.js';
import { resolveOpenAIOptions } from './resolve-options.js';

const KEY = 'sk-proj-unit-test-secret-key-abcd';
const PINNED = 'gpt-4o-2024-08-06';

/** The OpenAIConfigError that resolving `options` throws (fails the test when it does not throw). */
function configError(options: OpenAIModuleOptions, env: NodeJS.ProcessEnv = {}): OpenAIConfigError {
  let caught: unknown;
  try {
    resolveOpenAIOptions(options, env);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(OpenAIConfigError);
  return caught as OpenAIConfigError;
}

const problemsOf = (options: OpenAIModuleOptions, env: NodeJS.ProcessEnv = {}): string[] =>
  configError(options, env).problems.map((p) => p.path);

describe('resolveOpenAIOptions: environment selection', () => {
  it('uses options.environment over NODE_ENV', () => {
    const r = resolveOpenAIOptions({ apiKey: KEY, environment: 'test' }, { NODE_ENV: 'production' });
    expect(r.environment).toBe('test');
  });

  it('falls back to NODE_ENV, then to development', () => {
    expect(resolveOpenAIOptions({ apiKey: KEY }, { NODE_ENV: 'staging' }).environment).toBe('staging');
    expect(resolveOpenAIOptions({ apiKey: KEY }, {}).environment).toBe('development');
    expect(resolveOpenAIOptions({ apiKey: KEY }, { NODE_ENV: '  ' }).environment).toBe('development');
  });

  it('reads the env argument, not process.env', () => {
    const saved = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    try {
      expect(resolveOpenAIOptions({ apiKey: KEY }, { NODE_ENV: 'development' }).environment).toBe(
        'development',
      );
    } finally {
      process.env.NODE_ENV = saved;
    }
  });

  it('rejects an unknown environment, naming the known ones', () => {
    const err = configError({ apiKey: KEY, profiles: { qa: {} } }, { NODE_ENV: 'prodution' });
    expect(err.environment).toBe('prodution');
    const p = err.problems.find((x) => x.path === 'environment')!;
    expect(p.message).toContain('prodution');
    expect(p.fix).toContain('production');
    expect(p.fix).toContain('qa');
    expect(err.message).toContain('environment: unknown environment "prodution"');
  });

  it.each(['toString', 'constructor', 'hasOwnProperty', '__proto__'])(
    'treats the Object.prototype name %j as an unknown environment',
    (name) => {
      expect(problemsOf({ apiKey: KEY, environment: name })).toContain('environment');
    },
  );
});

describe('resolveOpenAIOptions: merge order', () => {
  it('shipped development defaults: pinning warn, config logged', () => {
    const r = resolveOpenAIOptions({ apiKey: KEY }, { NODE_ENV: 'development' });
    expect(r.models.pinning).toBe('warn');
    expect(r.logging).toMatchObject({ prompts: false, config: true, calls: true });
    expect(r.timeouts).toMatchObject({ attemptMs: 30_000, deadlineMs: 90_000 });
    expect(r.retry).toMatchObject({
      maxRetries: 2,
      initialDelayMs: 500,
      maxDelayMs: 8_000,
      maxRetryAfterMs: 60_000,
    });
    expect(r.maxTokens).toMatchObject({ cap: 1024, default: 1024, overCap: 'clamp' });
    expect(r.identity).toMatchObject({ field: 'safety_identifier', salt: '' });
  });

  it('shipped test defaults: boot config log off', () => {
    expect(resolveOpenAIOptions({ apiKey: KEY }, { NODE_ENV: 'test' }).logging.config).toBe(false);
  });

  it('production and staging enforce pinning by default', () => {
    expect(resolveOpenAIOptions({ apiKey: KEY }, { NODE_ENV: 'production' }).models.pinning).toBe('enforce');
    expect(resolveOpenAIOptions({ apiKey: KEY }, { NODE_ENV: 'staging' }).models.pinning).toBe('enforce');
  });

  it('base options override shipped env defaults, and profiles[env] override base (deep)', () => {
    const r = resolveOpenAIOptions(
      {
        apiKey: KEY,
        timeouts: { attemptMs: 5_000 },
        retry: { maxRetries: 4, initialDelayMs: 100 },
        models: { pinning: 'off' },
        profiles: {
          development: { retry: { maxRetries: 1 }, models: { embedding: 'text-embedding-3-large' } },
          production: { retry: { maxRetries: 7 } },
        },
      },
      { NODE_ENV: 'development' },
    );
    expect(r.retry).toMatchObject({
      maxRetries: 1,
      initialDelayMs: 100,
      maxDelayMs: 8_000,
      maxRetryAfterMs: 60_000,
    });
    expect(r.timeouts).toMatchObject({ attemptMs: 5_000, deadlineMs: 90_000 });
    expect(r.models.pinning).toBe('off');
    expect(r.models.embedding).toBe('text-embedding-3-large');
    expect(r.models.default).toBe(BASE_DEFAULTS.models.default);
  });

  it('base options override the production default of pinning, and a profile can tighten it again', () => {
    const base = { apiKey: KEY, models: { pinning: 'warn' as const, default: 'gpt-4o' } };
    expect(resolveOpenAIOptions(base, { NODE_ENV: 'production' }).models.pinning).toBe('warn');
    expect(
      problemsOf(
        { ...base, profiles: { production: { models: { pinning: 'enforce' } } } },
        { NODE_ENV: 'production' },
      ),
    ).toEqual(['models.default']);
  });

  it('replaces arrays instead of merging them', () => {
    const r = resolveOpenAIOptions(
      {
        apiKey: KEY,
        models: {
          fallbacks: ['gpt-4o-mini-2024-07-18', 'gpt-4-0613'],
          allow: [PINNED, 'gpt-4o-mini-2024-07-18', 'gpt-4-0613'],
        },
        profiles: {
          development: {
            models: { fallbacks: ['gpt-4-0613'], allow: ['gpt-4o-mini-2024-07-18', 'gpt-4-0613'] },
          },
        },
      },
      { NODE_ENV: 'development' },
    );
    expect(r.models.fallbacks).toEqual(['gpt-4-0613']);
    expect(r.models.allow).toEqual(['gpt-4o-mini-2024-07-18', 'gpt-4-0613']);
  });

  it('a custom environment defined only in profiles starts from the production defaults', () => {
    const r = resolveOpenAIOptions(
      { apiKey: KEY, profiles: { 'eu-prod': { timeouts: { attemptMs: 10_000 } } } },
      { NODE_ENV: 'eu-prod' },
    );
    expect(r.environment).toBe('eu-prod');
    expect(r.models.pinning).toBe('enforce');
    expect(r.timeouts.attemptMs).toBe(10_000);
    expect(
      problemsOf(
        { apiKey: KEY, models: { default: 'gpt-4o' }, profiles: { 'eu-prod': {} } },
        { NODE_ENV: 'eu-prod' },
      ),
    ).toEqual(['models.default']);
  });

  it('maxTokens.default follows the cap when unset, and is kept when set', () => {
    expect(resolveOpenAIOptions({ apiKey: KEY, maxTokens: { cap: 300 } }, {}).maxTokens.default).toBe(300);
    expect(
      resolveOpenAIOptions({ apiKey: KEY, maxTokens: { cap: 300, default: 100 } }, {}).maxTokens.default,
    ).toBe(100);
  });

  it('does not share state between calls (defaults are not mutated)', () => {
    const a = resolveOpenAIOptions({ apiKey: KEY, maxTokens: { cap: 50 } }, {});
    a.models.aliases.x = 'y';
    a.retry.maxRetries = 9;
    const b = resolveOpenAIOptions({ apiKey: KEY }, {});
    expect(b.maxTokens.default).toBe(1024);
    expect(b.models.aliases).toEqual({});
    expect(b.retry.maxRetries).toBe(2);
  });

  it('keeps a key provider function as is', () => {
    const provider = async () => KEY;
    expect(resolveOpenAIOptions({ apiKey: provider }, {}).apiKey).toBe(provider);
  });

  it('refuses per-profile keys that only make sense at the top level', () => {
    expect(
      problemsOf({ apiKey: KEY, profiles: { development: { environment: 'x', profiles: {} } as never } }, {}),
    ).toEqual(['profiles.development.environment', 'profiles.development.profiles']);
  });
});

describe('resolveOpenAIOptions: validation lists every problem at once', () => {
  it('missing key, bad timeouts, unpinned default, fallback outside the allow-list, prompt logging in production', () => {
    const paths = problemsOf(
      {
        timeouts: { attemptMs: 0, deadlineMs: -5 },
        models: { default: 'gpt-4o', fallbacks: ['gpt-4-0613'], allow: ['gpt-4o', PINNED] },
        logging: { prompts: true },
      },
      { NODE_ENV: 'production' },
    );
    expect(paths).toEqual(
      expect.arrayContaining([
        'apiKey',
        'timeouts.attemptMs',
        'timeouts.deadlineMs',
        'models.default',
        'models.fallbacks[0]',
        'logging.prompts',
      ]),
    );
  });

  it('deadline shorter than one attempt', () => {
    expect(problemsOf({ apiKey: KEY, timeouts: { attemptMs: 5_000, deadlineMs: 1_000 } })).toEqual([
      'timeouts.deadlineMs',
    ]);
  });

  it('non-integer and non-number timeouts', () => {
    expect(problemsOf({ apiKey: KEY, timeouts: { attemptMs: 1.5, deadlineMs: '90000' as never } })).toEqual([
      'timeouts.attemptMs',
      'timeouts.deadlineMs',
    ]);
  });

  it('a whitespace-only key and a key with whitespace', () => {
    expect(problemsOf({ apiKey: '   ' })).toEqual(['apiKey']);
    expect(problemsOf({ apiKey: `${KEY}\n` })).toEqual(['apiKey']);
  });

  it('retry, max tokens, pinning mode, identity field, base URL, organization', () => {
    const paths = problemsOf({
      apiKey: KEY,
      baseURL: 'ftp://example.com',
      organization: '  ',
      retry: { maxRetries: 11, initialDelayMs: -1, maxDelayMs: 10, maxRetryAfterMs: Number.NaN },
      maxTokens: { cap: 100, default: 200, overCap: 'truncate' as never },
      models: { pinning: 'strict' as never },
      identity: { field: 'email' as never },
    });
    expect(paths).toEqual(
      expect.arrayContaining([
        'baseURL',
        'organization',
        'retry.maxRetries',
        'retry.initialDelayMs',
        'retry.maxRetryAfterMs',
        'maxTokens.default',
        'maxTokens.overCap',
        'models.pinning',
        'identity.field',
      ]),
    );
  });

  it('an alias resolving to an unpinned model in production, an alias of an alias, an empty allow-list', () => {
    const paths = problemsOf(
      { apiKey: KEY, models: { default: 'chat', aliases: { chat: 'gpt-4o', fast: 'chat' }, allow: [] } },
      { NODE_ENV: 'production' },
    );
    expect(paths).toEqual(expect.arrayContaining(['models.default', 'models.aliases.fast', 'models.allow']));
  });

  it('accepts an alias that maps to a snapshot in production', () => {
    const r = resolveOpenAIOptions(
      { apiKey: KEY, models: { default: 'chat', aliases: { chat: PINNED } } },
      { NODE_ENV: 'production' },
    );
    expect(r.models.default).toBe('chat');
  });

  it('allows prompt logging in development, never in production', () => {
    expect(
      resolveOpenAIOptions({ apiKey: KEY, logging: { prompts: true } }, { NODE_ENV: 'development' }).logging
        .prompts,
    ).toBe(true);
    expect(
      problemsOf(
        { apiKey: KEY, profiles: { production: { logging: { prompts: true } } } },
        { NODE_ENV: 'production' },
      ),
    ).toEqual(['logging.prompts']);
  });

  it('the error message lists each problem with its fix', () => {
    const e = configError({ timeouts: { attemptMs: -1 } }, { NODE_ENV: 'development' });
    expect(e.name).toBe('OpenAIConfigError');
    expect(e.problems.length).toBeGreaterThanOrEqual(2);
    for (const p of e.problems) {
      expect(e.message).toContain(`${p.path}: ${p.message}. Fix: ${p.fix}`);
      expect(p.fix.length).toBeGreaterThan(5);
    }
  });
});

describe('describeOptions', () => {
  it('masks the key to a fingerprint, hides header values and the salt', () => {
    const r = resolveOpenAIOptions(
      { apiKey: KEY, defaultHeaders: { 'x-secret': 'hdr-value' }, identity: { salt: 'pepper' } },
      {},
    );
    const d = describeOptions(r);
    const text = JSON.stringify(d);
    expect(d.apiKey).toBe('sk-proj-...abcd');
    expect(text).not.toContain(KEY);
    expect(text).not.toContain('hdr-value');
    expect(text).not.toContain('pepper');
    expect(d.defaultHeaders).toEqual({ 'x-secret': '***' });
  });

  it('masks credentials in the base URL (a proxy with basic auth)', () => {
    const d = describeOptions(
      resolveOpenAIOptions({ apiKey: KEY, baseURL: 'https://gateway:pr0xy-pass@llm-proxy.internal/v1' }, {}),
    );
    expect(d.baseURL).toBe('https://***@llm-proxy.internal/v1');
    expect(JSON.stringify(d)).not.toContain('pr0xy-pass');
    expect(
      describeOptions(resolveOpenAIOptions({ apiKey: KEY, baseURL: 'http://127.0.0.1:8080/v1' }, {})).baseURL,
    ).toBe('http://127.0.0.1:8080/v1');
  });

  it('names a key provider without calling it', () => {
    let called = false;
    const d = describeOptions(resolveOpenAIOptions({ apiKey: async () => ((called = true), KEY) }, {}));
    expect(d.apiKey).toBe('provider()');
    expect(called).toBe(false);
  });
});
