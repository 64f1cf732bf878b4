import { Inject, Injectable, Logger, Optional } from '@nestjs/common';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { keyPart, type BreakerState, type OpenAIStore } from '../storage/openai-store.interface.js';

/** A model's admission by its breaker, for one call. */
export interface BreakerTicket {
  model: string;
  /** False: the breaker is open (or its probe is running); skip the model. */
  allowed: boolean;
  /** This call holds the half-open breaker's one probe. */
  probe: boolean;
  /** When not allowed: ms until the cool-down (or the running probe's lease) ends. */
  retryAfterMs: number;
  /** Failures counted when admitted: a success needs reporting only when some are (or this is a probe). */
  failures: number;
}

/** A breaker as `OpenAIHealthService` reports it: as this instance last saw it. */
export interface BreakerHealth {
  state: BreakerState;
  /** When it was seen in that state (ISO 8601). */
  since: string;
}

/**
 * Circuit breakers per model, kept in the shared store so every instance skips a failing model
 * together: `breaker.failures` consecutive failed attempts open it for `breaker.cooldownMs`, then one
 * probe (an atomic store operation: one instance, one call) closes or reopens it. Each transition is
 * logged once, by the instance that made it, and counted in `openai_breaker_transitions_total`; the
 * state as seen is the gauge `openai_breaker_state{model}`. A store that fails lets calls through.
 */
@Injectable()
export class CircuitBreakerService {
  private readonly logger = new Logger('OpenAIBreaker');
  private readonly seen = new Map<string, BreakerHealth>();

  constructor(
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Optional() private readonly metrics?: OpenAIMetricsService,
  ) {}

  /** True when breakers are on (`breaker.failures` > 0). */
  get enabled(): boolean {
    return this.options.breaker.failures > 0;
  }

  private key(model: string): string {
    return `breaker:${keyPart(model)}`;
  }

  /** Asks `model`'s breaker whether a call may go; `probeLeaseMs` bounds a probe that never reports. */
  async admit(model: string, probeLeaseMs: number): Promise<BreakerTicket> {
    try {
      const a = await this.store.breakerAdmit(this.key(model), probeLeaseMs);
      this.observe(model, a.state, a.changed, a.changed ? 'cool-down over, one probe let through' : '');
      return {
        model,
        allowed: a.allowed,
        probe: a.probe,
        retryAfterMs: a.retryAfterMs,
        failures: a.failures,
      };
    } catch (err) {
      this.logger.warn(`breaker of ${model} not readable, the call goes: ${(err as Error)?.message}`);
      return { model, allowed: true, probe: false, retryAfterMs: 0, failures: 0 };
    }
  }

  /**
   * Reports an attempt of an admitted call: `ok` when the model answered (any status but 408, 409 and
   * 5xx), else a failure. Returns the breaker's state after it (`open`: stop trying this model).
   */
  async report(ticket: BreakerTicket, ok: boolean): Promise<BreakerState> {
    if (ok && !ticket.probe && ticket.failures === 0) return 'closed';
    const { failures, cooldownMs } = this.options.breaker;
    try {
      const r = await this.store.breakerReport(
        this.key(ticket.model),
        ok,
        failures,
        cooldownMs,
        ticket.probe,
      );
      if (ok) ticket.failures = 0;
      this.observe(
        ticket.model,
        r.state,
        r.changed,
        r.state === 'open'
          ? ticket.probe
            ? `probe failed, open for ${cooldownMs} ms`
            : `${failures} consecutive failures, open for ${cooldownMs} ms`
          : ticket.probe
            ? 'probe succeeded'
            : 'the model answered',
      );
      ticket.probe = false;
      return r.state;
    } catch (err) {
      this.logger.warn(`breaker of ${ticket.model} not updated: ${(err as Error)?.message}`);
      return 'closed';
    }
  }

  private observe(model: string, state: BreakerState, changed: boolean, why: string): void {
    const last = this.seen.get(model);
    if (!last || last.state !== state) this.seen.set(model, { state, since: new Date().toISOString() });
    this.metrics?.breakerState(model, state, changed);
    if (!changed) return;
    const line = { msg: 'circuit breaker', model, state, reason: why };
    if (state === 'open') this.logger.warn(line);
    else this.logger.log(line);
  }

  /** Breakers as this instance last saw them (models it never called are closed and not listed). */
  health(): Record<string, BreakerHealth> {
    return Object.fromEntries(this.seen);
  }
}
