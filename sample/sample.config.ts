/** The sample app's settings, read from the environment (see SAMPLE_CONTRACT in the README). */
export interface SampleConfig {
  port: number;
  host: string;
  platform: 'express' | 'fastify';
  environment: string;
  apiKey: string;
  baseURL?: string;
  /** token -> user name */
  users: Map<string, string>;
  model?: string;
  fallbacks?: string[];
  timeoutMs?: number;
  maxRetries?: number;
  logFormat: 'json' | 'pretty';
  /** requests per user per minute on the chat routes (undefined: the profile's default) */
  rpm?: number;
  /** tokens per user per minute (undefined: the profile's default) */
  tpm?: number;
  redisUrl?: string;
  /** Redis Cluster seed nodes (`host:port`), from REDIS_CLUSTER_NODES; instead of `redisUrl`. */
  redisClusterNodes?: string[];
  /** spend budget per user per UTC day (USD) */
  budgetDailyUsd?: number;
  /** response cache TTL in seconds (0 or undefined: off) */
  cacheTtlS?: number;
  /** input moderation on the chat routes (undefined: on) */
  moderation?: boolean;
  /** consecutive failures that open a model's circuit breaker; 0: off (undefined: the profile's default) */
  breakerFailures?: number;
  /** cool-down of an open breaker in ms (undefined: the default) */
  breakerCooldownMs?: number;
  /** upstream calls in flight at once per user; 0: no cap (undefined: the default, none) */
  maxInFlightPerUser?: number;
}

function int(env: NodeJS.ProcessEnv, name: string, problems: string[], min = 0): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) {
    problems.push(`${name} must be an integer >= ${min}, got "${raw}"`);
    return undefined;
  }
  return n;
}

function onOff(env: NodeJS.ProcessEnv, name: string, problems: string[]): boolean | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  if (raw === 'on' || raw === 'off') return raw === 'on';
  problems.push(`${name} must be on or off, got "${raw}"`);
  return undefined;
}

function positiveNumber(env: NodeJS.ProcessEnv, name: string, problems: string[]): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) {
    problems.push(`${name} must be a positive number, got "${raw}"`);
    return undefined;
  }
  return n;
}

/** REDIS_CLUSTER_NODES: comma-separated `host:port` seeds of a Redis Cluster. */
function clusterNodes(env: NodeJS.ProcessEnv, problems: string[]): string[] | undefined {
  const raw = env.REDIS_CLUSTER_NODES;
  if (raw === undefined || raw.trim() === '') return undefined;
  if (env.REDIS_URL) problems.push('set REDIS_URL or REDIS_CLUSTER_NODES, not both');
  const nodes = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const n of nodes)
    if (!/^[^\s:]+:\d{1,5}$/.test(n)) problems.push(`REDIS_CLUSTER_NODES: "${n}" is not host:port`);
  return nodes;
}

/** Parses the environment; throws one error listing every invalid variable. */
export function readSampleConfig(
  env: NodeJS.ProcessEnv,
  upstream: { apiKey: string; baseURL?: string },
): SampleConfig {
  const problems: string[] = [];
  const users = new Map<string, string>();
  for (const pair of (env.SAMPLE_USERS ?? 'alice:alice-token,bob:bob-token').split(',')) {
    const [name, token] = pair.split(':').map((s) => s.trim());
    if (!name || !token) problems.push(`SAMPLE_USERS: "${pair}" is not name:token`);
    else users.set(token, name);
  }
  const platform = (env.SAMPLE_PLATFORM ?? 'express') as SampleConfig['platform'];
  if (platform !== 'express' && platform !== 'fastify')
    problems.push(`SAMPLE_PLATFORM must be express or fastify`);
  const logFormat = (env.LOG_FORMAT ?? 'pretty') as SampleConfig['logFormat'];
  if (logFormat !== 'json' && logFormat !== 'pretty') problems.push('LOG_FORMAT must be json or pretty');
  const config: SampleConfig = {
    port: int(env, 'PORT', problems, 0) ?? 3000,
    host: env.HOST ?? '127.0.0.1',
    platform,
    environment: env.NODE_ENV || 'development',
    apiKey: upstream.apiKey,
    baseURL: upstream.baseURL,
    users,
    model: env.OPENAI_MODEL || undefined,
    fallbacks: env.OPENAI_FALLBACK_MODELS
      ? env.OPENAI_FALLBACK_MODELS.split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : undefined,
    timeoutMs: int(env, 'OPENAI_TIMEOUT_MS', problems, 1),
    maxRetries: int(env, 'OPENAI_MAX_RETRIES', problems, 0),
    logFormat,
    rpm: int(env, 'RATE_LIMIT_RPM', problems, 1),
    tpm: int(env, 'RATE_LIMIT_TPM', problems, 1),
    redisUrl: env.REDIS_URL || undefined,
    redisClusterNodes: clusterNodes(env, problems),
    budgetDailyUsd: positiveNumber(env, 'BUDGET_USD_DAILY', problems),
    moderation: onOff(env, 'MODERATION', problems),
    cacheTtlS: int(env, 'CACHE_TTL_S', problems, 0),
    breakerFailures: int(env, 'BREAKER_FAILURES', problems, 0),
    breakerCooldownMs: int(env, 'BREAKER_COOLDOWN_MS', problems, 1),
    maxInFlightPerUser: int(env, 'MAX_INFLIGHT_PER_USER', problems, 0),
  };
  if (problems.length) throw new Error(`Invalid sample settings:\n  - ${problems.join('\n  - ')}`);
  return config;
}
