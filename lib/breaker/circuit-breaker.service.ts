import { randomUUID } from 'node:crypto';
import {
  Inject,
  Injectable,
  Logger,
  Optional,
  type OnModuleDestroy,
  type OnModuleInit,
} from '@nestjs/common';
import { OPENAI_RESOLVED_OPTIONS, OPENAI_STORE } from '../openai.constants.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OpenAIMetricsService } from '../metrics/openai-metrics.service.js';
import { configuredModels, roomForView } from '../models/model-names.js';
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

/** The store channel (under its key prefix) that carries breaker changes between instances. */
export const BREAKER_CHANNEL = 'sync:breaker';

/**
 * A breaker change one instance tells the others (JSON on `BREAKER_CHANNEL`): a transition, or the
 * first failure counted on a closed breaker (so the others report their next success, which clears it).
 */
interface BreakerMessage {
  /** Sender (an instance ignores its own messages). */
  i: string;
  /** Model. */
  m: string;
  /** State after the change. */
  s: BreakerState;
  /** Open: ms until its cool-down ends; half-open: until its probe's lease ends. */
  ms: number;
  /** Consecutive failures counted (as the sender knows: > 0 is what matters). */
  f: number;
  /** The sender's message number: one overtaken by a later one of the same sender and model is dropped. */
  n: number;
}

/** A model's breaker as this instance sees it. */
interface BreakerView {
  state: BreakerState;
  /** Epoch ms (this instance's clock) when the cool-down (open) or the probe's lease (half-open) ends. */
  until: number;
  /** Consecutive failures counted in the store, as last known (> 0: the next success is reported). */
  failures: number;
  /** Epoch ms of the last read of the store or message about it. */
  syncedAt: number;
  /** Bumped on every change: a store read that started before a change does not overwrite it. */
  seq: number;
  /** When it entered its state (ISO 8601). */
  since: string;
}

const STATES: readonly BreakerState[] = ['closed', 'open', 'half-open'];

/**
 * Circuit breakers per model, shared by every instance through the store, so every instance skips a
 * failing model together: `breaker.failures` consecutive failed attempts open it for
 * `breaker.cooldownMs`, then one probe (an atomic store operation: one instance, one call) closes or
 * reopens it. Each transition is logged once, by the instance that made it, and counted in
 * `openai_breaker_transitions_total`; the state as seen is the gauge `openai_breaker_state{model}`. A
 * store that fails lets calls through.
 *
 * The store's atomic scripts are the source of truth; each instance keeps a view of them, read on the
 * call path without a store round trip (`admit` answers synchronously while the view is closed, or open
 * with its cool-down running). A failure is reported to the store at once; a success only when failures
 * are counted. The store is asked (`breakerAdmit`) only when the view says open with its cool-down over,
 * or half-open, and by the first call to a model it does not know yet (the configured models are read
 * at boot). Transitions and first failures are published on the store's channel `sync:breaker` (Redis
 * pub/sub; a `BreakerMessage` in JSON, the time left relative, so clocks need not agree; one overtaken
 * by a later message of the same sender is dropped): another instance's view follows within the
 * message's delivery (milliseconds). Each instance also re-reads the breakers it knows
 * (`breakerPeek`, no probe taken) every `breaker.syncIntervalMs` in the background, and at once when its
 * subscription resumes after a lost connection, so a missed message is healed within that interval.
 * With a store without pub/sub, a call re-reads its model's breaker when the view is older than the
 * interval (at most one store read per model and interval).
 */
@Injectable()
export class CircuitBreakerService implements OnModuleInit, OnModuleDestroy {
  private readonly logger = new Logger('OpenAIBreaker');
  private readonly views = new Map<string, BreakerView>();
  private readonly id = randomUUID();
  /** Messages sent, and the last number received per sender and model (bounded). */
  private sent = 0;
  private readonly lastReceived = new Map<string, number>();
  private subscription?: { close(): Promise<void> };
  /** Subscribed to the other instances' changes (and re-reading in the background): no re-read on the call path. */
  private live = false;
  private timer?: NodeJS.Timeout;
  private syncing?: Promise<void>;
  private syncWarned = false;

  constructor(
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Optional() private readonly metrics?: OpenAIMetricsService,
  ) {
    this.configured = configuredModels(options.models);
  }

  /** The configured models: their views are never dropped to make room for another's. */
  private readonly configured: ReadonlySet<string>;

  /** True when breakers are on (`breaker.failures` > 0). */
  get enabled(): boolean {
    return this.options.breaker.failures > 0;
  }

  private key(model: string): string {
    return `breaker:${keyPart(model)}`;
  }

  /**
   * Subscribes to the other instances' changes, reads the configured models' breakers (one may be open
   * already) and starts the periodic re-read. Never fails the boot: without a subscription, calls
   * re-read their breaker once per `breaker.syncIntervalMs`.
   */
  async onModuleInit(): Promise<void> {
    if (!this.enabled) return;
    const interval = this.options.breaker.syncIntervalMs;
    if (this.store.subscribe) {
      try {
        this.subscription = await this.store.subscribe(BREAKER_CHANNEL, {
          message: (m) => this.receive(m),
          lost: () => {
            this.live = false;
          },
          resumed: () => {
            this.live = !!this.store.breakerPeek;
            void this.sync();
          },
        });
        // Messages keep the views current, and the periodic re-read heals a missed one (it needs breakerPeek).
        this.live = !!this.store.breakerPeek;
      } catch (err) {
        this.logger.warn(
          `breaker changes of other instances not received (${(err as Error)?.message}): calls re-read their breaker every ${interval} ms`,
        );
      }
    }
    await this.sync(this.configured);
    this.timer = setInterval(() => void this.sync(), interval);
    this.timer.unref();
  }

  async onModuleDestroy(): Promise<void> {
    clearInterval(this.timer);
    this.live = false;
    const sub = this.subscription;
    this.subscription = undefined;
    await sub?.close().catch(() => undefined);
  }

  /**
   * Asks `model`'s breaker whether a call may go; `probeLeaseMs` bounds a probe that never reports.
   * Synchronous (a ticket, no promise) when this instance's view decides: closed, or open with its
   * cool-down running; a promise when the store must be asked.
   */
  admit(model: string, probeLeaseMs: number): BreakerTicket | Promise<BreakerTicket> {
    const v = this.views.get(model);
    if (v) {
      const now = Date.now();
      if (this.live || now - v.syncedAt < this.options.breaker.syncIntervalMs) {
        if (v.state === 'closed')
          return { model, allowed: true, probe: false, retryAfterMs: 0, failures: v.failures };
        if (v.state === 'open' && now < v.until)
          return { model, allowed: false, probe: false, retryAfterMs: v.until - now, failures: v.failures };
      }
    }
    return this.ask(model, probeLeaseMs);
  }

  private async ask(model: string, probeLeaseMs: number): Promise<BreakerTicket> {
    try {
      const a = await this.store.breakerAdmit(this.key(model), probeLeaseMs);
      const ms = a.probe ? probeLeaseMs : a.retryAfterMs;
      this.apply(model, a.state, ms, a.failures, a.changed);
      if (a.changed) this.log(model, a.state, 'cool-down over, one probe let through');
      if (a.probe) this.tell(model, a.state, ms, a.failures);
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
   * 5xx), else a failure. Returns the breaker's state after it (`open`: stop trying this model):
   * synchronously (`'closed'`, nothing written) for a success when no failure is counted and this is not
   * the probe, else a promise, after the store's report.
   */
  report(ticket: BreakerTicket, ok: boolean): BreakerState | Promise<BreakerState> {
    if (ok && !ticket.probe && ticket.failures === 0 && !this.views.get(ticket.model)?.failures)
      return 'closed';
    return this.reportToStore(ticket, ok);
  }

  private async reportToStore(ticket: BreakerTicket, ok: boolean): Promise<BreakerState> {
    const { failures, cooldownMs } = this.options.breaker;
    const model = ticket.model;
    try {
      const r = await this.store.breakerReport(this.key(model), ok, failures, cooldownMs, ticket.probe);
      if (ok) ticket.failures = 0;
      const known = this.views.get(model);
      const wasClean = !known?.failures;
      const counted = ok ? 0 : Math.max(ticket.failures, known?.failures ?? 0) + 1;
      // The ms left: a cool-down this report started; else as known (0: unknown, ask the store next).
      const left = r.changed
        ? r.state === 'open'
          ? cooldownMs
          : 0
        : known?.state === r.state
          ? Math.max(0, known.until - Date.now())
          : 0;
      this.apply(model, r.state, left, counted, r.changed);
      if (r.changed)
        this.log(
          model,
          r.state,
          r.state === 'open'
            ? ticket.probe
              ? `probe failed, open for ${cooldownMs} ms`
              : `${failures} consecutive failures, open for ${cooldownMs} ms`
            : ticket.probe
              ? 'probe succeeded'
              : 'the model answered',
        );
      // Transitions, and the first failure on a clean breaker (the others then report their next success).
      if (r.changed || (!ok && r.state === 'closed' && wasClean)) this.tell(model, r.state, left, counted);
      ticket.probe = false;
      return r.state;
    } catch (err) {
      this.logger.warn(`breaker of ${model} not updated: ${(err as Error)?.message}`);
      return 'closed';
    }
  }

  /** Sets the view of `model` (`ms`: until its cool-down or probe lease ends) and the gauge. */
  private apply(model: string, state: BreakerState, ms: number, failures: number, changed = false): void {
    const now = Date.now();
    let v = this.views.get(model);
    if (!v) {
      // A closed, clean view of a model not configured may go: the store keeps its state. No room: no view
      // (the calls to this model ask the store).
      const room = roomForView(
        this.views,
        (m, x) => x.state === 'closed' && !x.failures && !this.configured.has(m),
      );
      if (!room) {
        this.metrics?.breakerState(model, state, changed);
        return;
      }
      v = { state, until: 0, failures: 0, syncedAt: now, seq: 0, since: new Date(now).toISOString() };
      this.views.set(model, v);
    } else if (v.state !== state) v.since = new Date(now).toISOString();
    v.state = state;
    v.until = state === 'closed' ? 0 : now + ms;
    v.failures = failures;
    v.syncedAt = now;
    v.seq++;
    this.metrics?.breakerState(model, state, changed);
  }

  private log(model: string, state: BreakerState, why: string): void {
    const line = { msg: 'circuit breaker', model, state, reason: why };
    if (state === 'open') this.logger.warn(line);
    else this.logger.log(line);
  }

  /** Publishes a change for the other instances (fire and forget: a lost message is healed by the re-read). */
  private tell(model: string, state: BreakerState, ms: number, failures: number): void {
    if (!this.store.publish) return;
    const m: BreakerMessage = {
      i: this.id,
      m: model,
      s: state,
      ms: Math.round(ms),
      f: failures,
      n: ++this.sent,
    };
    this.store
      .publish(BREAKER_CHANNEL, JSON.stringify(m))
      .catch((err: unknown) =>
        this.logger.warn(`breaker change of ${model} not sent: ${(err as Error)?.message}`),
      );
  }

  private receive(raw: string): void {
    let m: BreakerMessage;
    try {
      m = JSON.parse(raw) as BreakerMessage;
    } catch {
      return;
    }
    if (!m || m.i === this.id || typeof m.m !== 'string' || !STATES.includes(m.s)) return;
    // Messages may arrive out of order (on a Redis Cluster each PUBLISH may take another node).
    const from = `${m.i}\n${m.m}`;
    const n = Number(m.n) || 0;
    if (n > 0) {
      if (n <= (this.lastReceived.get(from) ?? 0)) return;
      this.lastReceived.delete(from);
      this.lastReceived.set(from, n);
      if (this.lastReceived.size > 1_000) this.lastReceived.delete(this.lastReceived.keys().next().value!);
    }
    const v = this.views.get(m.m);
    // A count of failures (closed, f > 0) never closes an open view: a close clears the count, so this
    // one was overtaken (messages of two instances may cross).
    if (m.s === 'closed' && m.f > 0 && v && v.state !== 'closed') return;
    this.apply(m.m, m.s, Math.max(0, Number(m.ms) || 0), Math.max(0, Number(m.f) || 0));
  }

  /**
   * Re-reads `models` (default: every model this instance knows) from the store without changing them,
   * when the store can (`breakerPeek`). One re-read at a time; a view changed while its read was under
   * way keeps the change (it is newer).
   */
  private sync(models?: Iterable<string>): Promise<void> {
    if (!this.store.breakerPeek) return Promise.resolve();
    if (this.syncing) return this.syncing;
    const list = [...(models ?? this.views.keys())];
    this.syncing = Promise.all(
      list.map(async (model) => {
        const seq = this.views.get(model)?.seq;
        try {
          const p = await this.store.breakerPeek!(this.key(model));
          if (this.views.get(model)?.seq !== seq) return;
          this.apply(model, p.state, p.retryAfterMs, p.failures);
          this.syncWarned = false;
        } catch (err) {
          if (this.syncWarned) return;
          this.syncWarned = true;
          this.logger.warn(`breakers not re-read from the store: ${(err as Error)?.message}`);
        }
      }),
    ).then(() => {
      this.syncing = undefined;
    });
    return this.syncing;
  }

  /**
   * Breakers as this instance last saw them: the configured models' and those it called or heard of
   * (any other is closed and not listed).
   */
  health(): Record<string, BreakerHealth> {
    const out: Record<string, BreakerHealth> = {};
    for (const [model, v] of this.views) out[model] = { state: v.state, since: v.since };
    return out;
  }
}
