import type { ResolvedOpenAIOptions } from '../interfaces/openai-module-options.interface.js';
import { fingerprintKey } from '../logging/redact.js';

/** The effective configuration as one JSON-safe object, secrets masked (key fingerprint, salt hidden). */
export function describeOptions(o: ResolvedOpenAIOptions): Record<string, unknown> {
  return {
    ...o,
    apiKey: typeof o.apiKey === 'function' ? 'provider()' : fingerprintKey(o.apiKey),
    defaultHeaders: Object.fromEntries(Object.keys(o.defaultHeaders).map((k) => [k, '***'])),
    identity: { ...o.identity, salt: o.identity.salt ? '***' : '' },
  };
}
