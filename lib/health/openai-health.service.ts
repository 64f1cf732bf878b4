import { Inject, Injectable, Optional } from '@nestjs/common';
import { CircuitBreakerService, type BreakerHealth } from '../breaker/circuit-breaker.service.js';
import { OPENAI_STORE } from '../openai.constants.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import { ResilientStore, type StoreHealth } from '../storage/resilient.store.js';

/** Health of the library's dependencies, for a `/health` route or a `@nestjs/terminus` indicator. */
export interface OpenAIHealth {
  /** False when a required dependency (Redis, when configured) does not answer. */
  up: boolean;
  storage: StoreHealth;
  /**
   * Circuit breakers as this instance's view has them (`closed`, `open`, `half-open`): the configured
   * models' and those it called or heard of from other instances. An open breaker does not make the
   * library down (calls use the fallbacks).
   */
  breakers: Record<string, BreakerHealth>;
}

/** Checks the library's dependencies. One store ping per call. */
@Injectable()
export class OpenAIHealthService {
  constructor(
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Optional() private readonly breakers?: CircuitBreakerService,
  ) {}

  async check(): Promise<OpenAIHealth> {
    let up = true;
    try {
      await this.store.ping();
    } catch {
      up = false;
    }
    const storage =
      this.store instanceof ResilientStore
        ? this.store.health()
        : { kind: this.store.kind, up, policy: 'fail-closed' as const, outages: 0 };
    return { up, storage: { ...storage, up }, breakers: this.breakers?.health() ?? {} };
  }
}
