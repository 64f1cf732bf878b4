import type { ResolvedOpenAIOptions } from './openai-module-options.interface.js';
import { fingerprintKey } from '../logging/redact.js';

/** The effective configuration as one JSON-safe object, secrets masked (key fingerprint, salt hidden). */
export function describeOptions(o: ResolvedOpenAIOptions): Record<string, unknown> {
  return {
    ...o,
    apiKey: typeof o.apiKey === 'function' ? 'provider()' : fingerprintKey(o.apiKey),
    hooks: `${o.hooks.length} custom`,
    baseURL: o.baseURL?.replace(/\/\/[^@/]*@/, '//***@'),
    defaultHeaders: Object.fromEntries(Object.keys(o.defaultHeaders).map((k) => [k, '***'])),
    identity: { ...o.identity, salt: o.identity.salt ? '***' : '' },
    limits: {
      ...o.limits,
      tiers: o.limits.tiers ? 'function' : undefined,
      getTracker: o.limits.getTracker ? 'function' : undefined,
    },
    budgets: {
      ...o.budgets,
      onAlert: o.budgets.onAlert ? 'function' : undefined,
      userLimits: o.budgets.userLimits ? 'function' : undefined,
    },
    metrics: { ...o.metrics, registry: o.metrics.registry ? 'custom registry' : undefined },
    storage: {
      ...o.storage,
      redis: o.storage.redis && {
        ...o.storage.redis,
        client: o.storage.redis.client ? 'ioredis client' : undefined,
        url: o.storage.redis.url?.replace(/\/\/[^@/]*@/, '//***@'),
        redisOptions: o.storage.redis.redisOptions ? '***' : undefined,
      },
    },
  };
}
