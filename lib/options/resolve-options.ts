import { OpenAIConfigError, type ConfigProblem } from '../errors/openai-config.error.js';
import type {
  OpenAIModuleOptions,
  OpenAIProfileOptions,
  ResolvedOpenAIOptions,
} from './openai-module-options.interface.js';
import { isPinnedModel } from '../models/model-names.js';
import { redisStoreProblems } from '../storage/redis-options.validate.js';
import { deepMerge } from '../utils/deep-merge.js';
import {
  BASE_DEFAULTS,
  ENVIRONMENT_DEFAULTS,
  NO_PROMPT_LOGGING_ENVIRONMENTS,
} from './environment-defaults.js';

const PROFILE_KEYS = new Set<keyof OpenAIProfileOptions>([
  'apiKey',
  'apiKeyCacheMs',
  'organization',
  'project',
  'baseURL',
  'defaultHeaders',
  'models',
  'maxTokens',
  'timeouts',
  'retry',
  'logging',
  'identity',
  'limits',
  'storage',
  'pricing',
  'usage',
  'budgets',
  'metrics',
  'moderation',
  'input',
  'cache',
  'breaker',
  'pacing',
]);

/**
 * Merges, in order: shared defaults, the shipped defaults of the environment, the base options, and
 * `profiles[environment]`; then validates the result. Throws `OpenAIConfigError` listing every problem.
 *
 * @param env the process environment, read only for `NODE_ENV` when `options.environment` is unset.
 */
export function resolveOpenAIOptions(
  options: OpenAIModuleOptions,
  env: NodeJS.ProcessEnv = process.env,
): ResolvedOpenAIOptions {
  const problems: ConfigProblem[] = [];
  const environment = (options.environment ?? env.NODE_ENV ?? 'development').trim() || 'development';
  const profiles = options.profiles ?? {};

  for (const name of Object.keys(profiles)) {
    for (const key of Object.keys(profiles[name] ?? {})) {
      if (!PROFILE_KEYS.has(key as keyof OpenAIProfileOptions)) {
        problems.push({
          path: `profiles.${name}.${key}`,
          message: `"${key}" cannot be set per profile`,
          fix: `set it at the top level of the options, or remove it (profile keys: ${[...PROFILE_KEYS].join(', ')})`,
        });
      }
    }
  }
  // Own keys only: `in` would take "toString" or "constructor" for a known environment.
  const known = Object.hasOwn(ENVIRONMENT_DEFAULTS, environment) || Object.hasOwn(profiles, environment);
  if (!known) {
    problems.push({
      path: 'environment',
      message: `unknown environment "${environment}"`,
      fix: `use one of ${[...new Set([...Object.keys(ENVIRONMENT_DEFAULTS), ...Object.keys(profiles)])].join(', ')}, or add profiles.${environment}`,
    });
  }
  const envDefaults = Object.hasOwn(ENVIRONMENT_DEFAULTS, environment)
    ? ENVIRONMENT_DEFAULTS[environment]
    : ENVIRONMENT_DEFAULTS.production;
  const { profiles: _p, environment: _e, ...base } = options;
  const merged = deepMerge<ResolvedOpenAIOptions>(
    BASE_DEFAULTS as unknown as Partial<ResolvedOpenAIOptions>,
    envDefaults as Partial<ResolvedOpenAIOptions>,
    base as Partial<ResolvedOpenAIOptions>,
    (Object.hasOwn(profiles, environment)
      ? profiles[environment]
      : undefined) as Partial<ResolvedOpenAIOptions>,
  );
  merged.environment = environment;
  merged.hooks ??= [];
  if (merged.maxTokens.default === undefined) merged.maxTokens.default = merged.maxTokens.cap;

  validate(merged, problems);
  if (problems.length) throw new OpenAIConfigError(environment, problems);
  return merged;
}

function validateWindows(
  path: string,
  windows: unknown,
  add: (path: string, message: string, fix: string) => void,
  requests = false,
): void {
  if (!Array.isArray(windows))
    return add(path, 'must be an array of { name, limit, ttl }', 'set [] for no limit');
  const names = new Set<string>();
  windows.forEach((w: { name?: unknown; limit?: unknown; ttl?: unknown }, i) => {
    if (typeof w?.name !== 'string' || !/^[A-Za-z0-9_-]{1,32}$/.test(w.name))
      add(`${path}[${i}].name`, 'must be 1-32 letters, digits, _ or -', "use a name such as 'minute'");
    else if (names.has(w.name))
      add(`${path}[${i}].name`, `"${w.name}" is used twice`, 'give each window its own name');
    else names.add(w.name);
    if (!isPositiveInt(w?.limit))
      add(
        `${path}[${i}].limit`,
        `must be a positive integer, got ${String(w?.limit)}`,
        'set a limit such as 20',
      );
    if (!isPositiveInt(w?.ttl))
      add(
        `${path}[${i}].ttl`,
        `must be a positive integer (ms), got ${String(w?.ttl)}`,
        'set a window such as 60000',
      );
    const blockDuration = (w as { blockDuration?: unknown })?.blockDuration;
    if (blockDuration !== undefined && (!requests || !isPositiveInt(blockDuration)))
      add(
        `${path}[${i}].blockDuration`,
        requests
          ? `must be a positive integer (ms), got ${JSON.stringify(blockDuration)}`
          : 'applies to request windows only',
        requests ? 'set a duration such as 300000, or remove it' : 'remove it',
      );
    // @nestjs/throttler's per-throttler options, which a window here does not take: never ignored silently
    for (const key of ['skipIf', 'ignoreUserAgents', 'setHeaders', 'getTracker', 'generateKey'])
      if (w && typeof w === 'object' && Object.hasOwn(w, key))
        add(
          `${path}[${i}].${key}`,
          'is not supported per window',
          key === 'getTracker' || key === 'generateKey'
            ? 'remove it: limits count per user from identity.resolve'
            : `set limits.${key} (it applies to every window)`,
        );
  });
}

const LIMITS_KEYS = [
  'requests',
  'tokens',
  'tiers',
  'getTracker',
  'overrideScope',
  'skipIf',
  'ignoreUserAgents',
  'errorMessage',
  'setHeaders',
  'maxInFlight',
  'inFlightTtlMs',
];

function isPositiveInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0;
}

function validate(o: ResolvedOpenAIOptions, problems: ConfigProblem[]): void {
  const add = (path: string, message: string, fix: string) => problems.push({ path, message, fix });

  if (typeof o.apiKey === 'function') {
    // a provider: checked when called
  } else if (typeof o.apiKey !== 'string' || o.apiKey.trim() === '') {
    add(
      'apiKey',
      'no API key',
      'pass apiKey (for example from process.env.OPENAI_API_KEY) or an async key provider',
    );
  } else if (/\s/.test(o.apiKey)) {
    add(
      'apiKey',
      'the API key contains whitespace',
      'trim the value you read from the environment or secret store',
    );
  }
  if (!(Number.isInteger(o.apiKeyCacheMs) && o.apiKeyCacheMs >= 0))
    add(
      'apiKeyCacheMs',
      `must be an integer >= 0 (ms), got ${String(o.apiKeyCacheMs)}`,
      'set e.g. 300000, or 0 to ask the key provider before every request',
    );
  if (o.baseURL !== undefined) {
    try {
      const u = new URL(o.baseURL);
      if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error('protocol');
    } catch {
      add('baseURL', `"${o.baseURL}" is not an http(s) URL`, 'use a URL such as https://api.openai.com/v1');
    }
  }
  for (const [field, value] of [
    ['organization', o.organization],
    ['project', o.project],
  ] as const) {
    if (value !== undefined && (typeof value !== 'string' || value.trim() === '')) {
      add(
        field,
        'must be a non-empty string when set',
        `remove ${field} or set the ID shown in the OpenAI dashboard`,
      );
    }
  }

  for (const key of ['attemptMs', 'deadlineMs'] as const) {
    if (!isPositiveInt(o.timeouts[key]))
      add(
        `timeouts.${key}`,
        `must be a positive integer (ms), got ${String(o.timeouts[key])}`,
        'set a value such as 30000',
      );
  }
  if (
    isPositiveInt(o.timeouts.attemptMs) &&
    isPositiveInt(o.timeouts.deadlineMs) &&
    o.timeouts.deadlineMs < o.timeouts.attemptMs
  ) {
    add(
      'timeouts.deadlineMs',
      `(${o.timeouts.deadlineMs} ms) is shorter than one attempt (${o.timeouts.attemptMs} ms)`,
      'make deadlineMs at least attemptMs',
    );
  }
  if (!(Number.isInteger(o.retry.maxRetries) && o.retry.maxRetries >= 0 && o.retry.maxRetries <= 10)) {
    add(
      'retry.maxRetries',
      `must be an integer from 0 to 10, got ${String(o.retry.maxRetries)}`,
      'set a value such as 2',
    );
  }
  for (const key of ['initialDelayMs', 'maxDelayMs', 'maxRetryAfterMs'] as const) {
    if (!(typeof o.retry[key] === 'number' && Number.isFinite(o.retry[key]) && o.retry[key] >= 0)) {
      add(
        `retry.${key}`,
        `must be a number of ms >= 0, got ${String(o.retry[key])}`,
        'set a value such as 500',
      );
    }
  }
  if (o.retry.maxDelayMs < o.retry.initialDelayMs)
    add('retry.maxDelayMs', 'is below retry.initialDelayMs', 'make maxDelayMs at least initialDelayMs');

  if (!isPositiveInt(o.maxTokens.cap))
    add(
      'maxTokens.cap',
      `must be a positive integer (tokens), got ${String(o.maxTokens.cap)}`,
      'set a value such as 1024',
    );
  if (!isPositiveInt(o.maxTokens.default))
    add(
      'maxTokens.default',
      `must be a positive integer (tokens), got ${String(o.maxTokens.default)}`,
      'set a value no larger than maxTokens.cap',
    );
  else if (isPositiveInt(o.maxTokens.cap) && o.maxTokens.default > o.maxTokens.cap)
    add(
      'maxTokens.default',
      `(${o.maxTokens.default}) is above maxTokens.cap (${o.maxTokens.cap})`,
      'lower it or raise the cap',
    );
  if (o.maxTokens.overCap !== 'clamp' && o.maxTokens.overCap !== 'reject')
    add('maxTokens.overCap', `must be 'clamp' or 'reject'`, "set 'clamp'");

  const m = o.models;
  if (!['enforce', 'warn', 'off'].includes(m.pinning))
    add(
      'models.pinning',
      `must be 'enforce', 'warn' or 'off', got ${String(m.pinning)}`,
      "set 'enforce' in production",
    );
  const resolve = (name: string) => m.aliases[name] ?? name;
  const checkModel = (path: string, name: unknown) => {
    if (typeof name !== 'string' || name.trim() === '') {
      add(path, 'must be a model name', 'set a snapshot such as gpt-4o-2024-08-06');
      return;
    }
    const target = resolve(name);
    if (m.pinning === 'enforce' && !isPinnedModel(target)) {
      add(
        path,
        `"${name}"${target !== name ? ` (alias of "${target}")` : ''} is not a dated snapshot, and pinning is enforced in "${o.environment}"`,
        `use a snapshot such as ${target}-2024-08-06 (see the model's page), or map an alias to one`,
      );
    }
    if (m.allow && !m.allow.includes(target))
      add(path, `"${target}" is not in models.allow`, 'add it to models.allow or choose an allowed model');
  };
  for (const [alias, target] of Object.entries(m.aliases)) {
    if (typeof target !== 'string' || !target)
      add(`models.aliases.${alias}`, 'must map to a model name', 'set a snapshot name');
    else if (m.aliases[target] !== undefined)
      add(
        `models.aliases.${alias}`,
        `maps to "${target}", which is itself an alias`,
        'map each alias straight to a model name',
      );
  }
  checkModel('models.default', m.default);
  if (!Array.isArray(m.fallbacks))
    add('models.fallbacks', 'must be an array of model names', 'set [] or a list');
  else m.fallbacks.forEach((f, i) => checkModel(`models.fallbacks[${i}]`, f));
  if (m.requested !== 'configured' && m.requested !== 'any')
    add('models.requested', `must be 'configured' or 'any'`, "set 'configured' in production");
  if (m.allow !== undefined && (!Array.isArray(m.allow) || m.allow.length === 0))
    add('models.allow', 'must be a non-empty array when set', 'remove it or list the allowed models');

  if (
    o.logging.prompts &&
    (NO_PROMPT_LOGGING_ENVIRONMENTS.has(o.environment) || !Object.hasOwn(ENVIRONMENT_DEFAULTS, o.environment))
  ) {
    add(
      'logging.prompts',
      `prompt logging is never allowed in production or in an environment that starts from its defaults ("${o.environment}")`,
      'enable it in a development, test or staging profile only',
    );
  }
  if (!Array.isArray(o.logging.redact) || !o.logging.redact.every((r) => r instanceof RegExp))
    add('logging.redact', 'must be an array of RegExp', 'use e.g. [/ACME-\\d{6}/g]');
  validateWindows('limits.requests', o.limits.requests, add, true);
  validateWindows('limits.tokens', o.limits.tokens, add);
  const lim = o.limits;
  // ThrottlerModule habits (`throttlers`, `storage`, `generateKey`, ...) would otherwise be ignored silently
  for (const key of Object.keys(lim ?? {}))
    if (!LIMITS_KEYS.includes(key))
      add(
        `limits.${key}`,
        key === 'throttlers' ? "is ThrottlerModule's option, not read here" : 'is not an option of limits',
        key === 'throttlers'
          ? 'list the windows in limits.requests: [{ name, limit, ttl }]'
          : `use one of ${LIMITS_KEYS.join(', ')} (storage: the storage option; trackers: identity.resolve)`,
      );
  if (lim.overrideScope !== undefined && lim.overrideScope !== 'route' && lim.overrideScope !== 'user')
    add('limits.overrideScope', `must be 'route' or 'user', got ${String(lim.overrideScope)}`, "set 'route'");
  if (lim.skipIf !== undefined && typeof lim.skipIf !== 'function')
    add('limits.skipIf', 'must be a function (context) => boolean', 'pass a function or remove it');
  if (
    lim.ignoreUserAgents !== undefined &&
    !(Array.isArray(lim.ignoreUserAgents) && lim.ignoreUserAgents.every((r) => r instanceof RegExp))
  )
    add('limits.ignoreUserAgents', 'must be an array of RegExp', 'use e.g. [/kube-probe/i]');
  if (
    lim.errorMessage !== undefined &&
    typeof lim.errorMessage !== 'string' &&
    typeof lim.errorMessage !== 'function'
  )
    add(
      'limits.errorMessage',
      'must be a string or a function (context, detail) => string',
      'fix or remove it',
    );
  if (lim.setHeaders !== undefined && typeof lim.setHeaders !== 'boolean')
    add('limits.setHeaders', `must be true or false, got ${String(lim.setHeaders)}`, 'set true or false');
  if (o.limits.tiers !== undefined && typeof o.limits.tiers !== 'function')
    add('limits.tiers', 'must be a function (user) => limits', 'pass a function or remove it');
  if (o.limits.getTracker !== undefined && typeof o.limits.getTracker !== 'function')
    add('limits.getTracker', 'must be a function (req) => string', 'pass a function or remove it');
  if (!(Number.isInteger(lim.maxInFlight) && lim.maxInFlight >= 0))
    add(
      'limits.maxInFlight',
      `must be an integer >= 0, got ${String(lim.maxInFlight)}`,
      'set 0 for no cap, or a cap such as 4',
    );
  if (lim.inFlightTtlMs !== undefined && !isPositiveInt(lim.inFlightTtlMs))
    add(
      'limits.inFlightTtlMs',
      `must be a positive integer (ms), got ${String(lim.inFlightTtlMs)}`,
      'set at least timeouts.deadlineMs, or remove it',
    );
  const br = o.breaker;
  if (!(Number.isInteger(br.failures) && br.failures >= 0))
    add('breaker.failures', `must be an integer >= 0, got ${String(br.failures)}`, 'set 0 (off) or e.g. 5');
  if (!isPositiveInt(br.cooldownMs))
    add(
      'breaker.cooldownMs',
      `must be a positive integer (ms), got ${String(br.cooldownMs)}`,
      'set e.g. 30000',
    );
  if (!isPositiveInt(br.syncIntervalMs))
    add(
      'breaker.syncIntervalMs',
      `must be a positive integer (ms), got ${String(br.syncIntervalMs)}`,
      'set e.g. 5000',
    );
  const pc = o.pacing;
  if (!['off', 'queue', 'refuse'].includes(pc.mode))
    add('pacing.mode', `must be 'off', 'queue' or 'refuse', got ${String(pc.mode)}`, "set 'queue'");
  for (const key of ['minRemainingRequests', 'minRemainingTokens'] as const)
    if (!(Number.isInteger(pc[key]) && pc[key] >= 0))
      add(`pacing.${key}`, `must be an integer >= 0, got ${String(pc[key])}`, 'set e.g. 0');
  if (!isPositiveInt(pc.syncIntervalMs))
    add(
      'pacing.syncIntervalMs',
      `must be a positive integer (ms), got ${String(pc.syncIntervalMs)}`,
      'set e.g. 5000',
    );
  const st = o.storage;
  if (st.type !== 'memory' && st.type !== 'redis')
    add('storage.type', `must be 'memory' or 'redis', got ${String(st.type)}`, "set 'memory' or 'redis'");
  for (const p of redisStoreProblems(st.type, st.redis)) add(p.path, p.message, p.fix);
  if (!['fail-closed', 'fail-open', 'memory'].includes(st.onFailure))
    add('storage.onFailure', `must be 'fail-closed', 'fail-open' or 'memory'`, "set 'memory'");
  if (!isPositiveInt(st.instances))
    add(
      'storage.instances',
      `must be a positive integer, got ${String(st.instances)}`,
      'set the number of app instances',
    );
  if (!isPositiveInt(st.connectTimeoutMs))
    add('storage.connectTimeoutMs', `must be a positive integer (ms)`, 'set a value such as 5000');
  if (st.memory?.maxKeys !== undefined && !isPositiveInt(st.memory.maxKeys))
    add('storage.memory.maxKeys', 'must be a positive integer', 'set a value such as 200000');
  for (const [model, p] of Object.entries(o.pricing.models)) {
    for (const k of ['input', 'output', 'cachedInput'] as const) {
      const v = (p as unknown as Record<string, unknown>)?.[k];
      if (
        (k !== 'cachedInput' || v !== undefined) &&
        !(typeof v === 'number' && Number.isFinite(v) && v >= 0)
      ) {
        add(
          `pricing.models.${model}.${k}`,
          `must be a price >= 0 in USD per 1M tokens, got ${String(v)}`,
          'copy the price from https://openai.com/api/pricing',
        );
      }
    }
  }
  for (const key of ['dailyRetentionDays', 'monthlyRetentionDays'] as const) {
    if (!isPositiveInt(o.usage[key]))
      add(`usage.${key}`, 'must be a positive integer (days)', 'set a value such as 35');
  }
  if (!isPositiveInt(o.usage.flushIntervalMs))
    add('usage.flushIntervalMs', 'must be a positive integer (ms)', 'set a value such as 1000');
  if (!isPositiveInt(o.usage.maxPendingRecords))
    add('usage.maxPendingRecords', 'must be a positive integer (records)', 'set a value such as 100000');
  for (const scope of ['user', 'project'] as const) {
    for (const period of ['dailyUsd', 'monthlyUsd'] as const) {
      const v = o.budgets[scope]?.[period];
      if (v !== undefined && !(typeof v === 'number' && Number.isFinite(v) && v > 0))
        add(
          `budgets.${scope}.${period}`,
          `must be a positive amount in USD, got ${String(v)}`,
          'set an amount such as 5, or remove it',
        );
    }
  }
  if (
    !Array.isArray(o.budgets.alertThresholds) ||
    o.budgets.alertThresholds.some((t) => !(typeof t === 'number' && t > 0 && t <= 1))
  ) {
    add('budgets.alertThresholds', 'must be fractions in (0, 1]', 'set e.g. [0.5, 0.8, 1]');
  }
  if (!['reject', 'allow'].includes(o.budgets.unpricedModels))
    add('budgets.unpricedModels', "must be 'reject' or 'allow'", "set 'reject'");
  if (!['requested', 'dearest'].includes(o.budgets.reserveTier))
    add('budgets.reserveTier', "must be 'requested' or 'dearest'", "set 'requested'");
  const leases = o.budgets.projectLeases;
  if (typeof leases.enabled !== 'boolean')
    add('budgets.projectLeases.enabled', 'must be a boolean', 'set true');
  if (!(typeof leases.maxUsd === 'number' && Number.isFinite(leases.maxUsd) && leases.maxUsd > 0))
    add('budgets.projectLeases.maxUsd', 'must be a positive amount in USD', 'set e.g. 1');
  if (!(
    typeof leases.perCallBelowUsd === 'number' &&
    Number.isFinite(leases.perCallBelowUsd) &&
    leases.perCallBelowUsd >= 0
  ))
    add('budgets.projectLeases.perCallBelowUsd', 'must be an amount in USD, 0 or more', 'set e.g. 1');
  if (!isPositiveInt(leases.ttlMs))
    add('budgets.projectLeases.ttlMs', 'must be a positive whole number of ms', 'set e.g. 60000');
  if (!o.metrics.prefix || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(o.metrics.prefix))
    add('metrics.prefix', 'must be a valid Prometheus name prefix', "set 'openai_'");
  const mod = o.moderation;
  if (!['fail-closed', 'fail-open'].includes(mod.onError))
    add('moderation.onError', "must be 'fail-closed' or 'fail-open'", "set 'fail-closed' in production");
  if (!isPositiveInt(mod.timeoutMs))
    add('moderation.timeoutMs', 'must be a positive integer (ms)', 'set a value such as 5000');
  if (!(Number.isInteger(mod.cacheTtlMs) && mod.cacheTtlMs >= 0))
    add('moderation.cacheTtlMs', 'must be an integer >= 0 (ms)', 'set 0 to disable the cache');
  for (const [cat, t] of Object.entries(mod.thresholds ?? {})) {
    if (!(typeof t === 'number' && t >= 0 && t <= 1))
      add(`moderation.thresholds.${cat}`, 'must be a score from 0 to 1', 'set e.g. 0.5');
  }
  if (!Array.isArray(mod.roles) || mod.roles.length === 0)
    add('moderation.roles', 'must list at least one role', "set ['user']");
  if (!isPositiveInt(mod.streamCheckIntervalChars))
    add('moderation.streamCheckIntervalChars', 'must be a positive integer', 'set e.g. 400');
  if (mod.via !== 'endpoint' && mod.via !== 'in-request')
    add('moderation.via', `must be 'endpoint' or 'in-request', got ${String(mod.via)}`, "set 'endpoint'");
  for (const key of ['maxMessages', 'maxChars', 'maxPromptTokens'] as const) {
    if (!isPositiveInt(o.input[key]))
      add(`input.${key}`, `must be a positive integer, got ${String(o.input[key])}`, 'set a cap');
  }
  if (!(Number.isInteger(o.cache.ttlMs) && o.cache.ttlMs >= 0))
    add(
      'cache.ttlMs',
      `must be an integer >= 0 (ms), got ${String(o.cache.ttlMs)}`,
      'set 0 to turn the cache off',
    );
  if (!isPositiveInt(o.cache.maxEntryBytes))
    add('cache.maxEntryBytes', 'must be a positive integer (bytes)', 'set a value such as 262144');
  if (!Array.isArray(o.hooks))
    add('hooks', 'must be an array of call hooks', 'set [] or a list of { reserve(call) }');
  else
    o.hooks.forEach((h, i) => {
      if (typeof (h as { reserve?: unknown })?.reserve !== 'function')
        add(`hooks[${i}]`, 'must have a reserve(call) method', 'implement OpenAICallHook');
    });
  if (typeof o.identity.promptCacheKey !== 'boolean')
    add('identity.promptCacheKey', 'must be true or false', 'set false');
  if (!['safety_identifier', 'user', 'none'].includes(o.identity.field))
    add('identity.field', `must be 'safety_identifier', 'user' or 'none'`, "set 'safety_identifier'");
  if (o.identity.resolve !== undefined && typeof o.identity.resolve !== 'function')
    add('identity.resolve', 'must be a function (req) => user ID', 'e.g. (req) => req.user?.accountId');
  if (o.identity.resolve !== undefined && o.limits.getTracker !== undefined)
    add(
      'limits.getTracker',
      'is replaced by identity.resolve, which is also set',
      'remove limits.getTracker (identity.resolve serves the guard too)',
    );
}
