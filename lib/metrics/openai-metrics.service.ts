import { Inject, Injectable, type OnModuleDestroy } from '@nestjs/common';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { NormalizedUsage, UpstreamCall } from '../call/upstream-call.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OpenAIConfigError, type ConfigProblem } from '../errors/openai-config.error.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';
import { DEFAULT_PRICES } from '../pricing/default-prices.js';

/** HTTP status class of an upstream outcome, or `timeout` / `connection` when there was no status. */
export type StatusClass = '2xx' | '4xx' | '5xx' | 'timeout' | 'connection' | 'aborted';

/** What is read of a collector already in the registry (it may come from another copy of prom-client). */
interface CollectorShape {
  type: 'counter' | 'gauge' | 'histogram' | 'summary';
  labelNames?: readonly string[];
  upperBounds?: readonly number[];
}

/** Why `existing` cannot serve as the collector wanted, or `null` when it can. */
function collectorMismatch(
  existing: CollectorShape,
  type: CollectorShape['type'],
  labelNames: readonly string[],
  buckets?: readonly number[],
): string | null {
  const labels = [...(existing.labelNames ?? [])].sort();
  const wanted = [...labelNames].sort();
  if (existing.type !== type || labels.join() !== wanted.join())
    return `a ${existing.type} with labels [${labels.join(', ')}], where the library needs a ${type} with labels [${wanted.join(', ')}]`;
  if (buckets && (existing.upperBounds ?? []).join() !== buckets.join())
    return `a histogram with buckets [${(existing.upperBounds ?? []).join(', ')}], where this module's \`metrics.latencyBuckets\` are [${buckets.join(', ')}]`;
  return null;
}

/** A `service_tier` as a bounded label: the tiers OpenAI documents, else `other` (`default` when none). */
const tierLabel = (t: string | undefined) =>
  t === undefined
    ? 'default'
    : ['default', 'auto', 'flex', 'priority', 'scale', 'batch'].includes(t)
      ? t
      : 'other';

/** Buckets of the pipeline overhead histogram (s): 50 µs to 50 ms. */
const OVERHEAD_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05];

/**
 * The increments of one call's series (endpoint, model, route, service tier), summed in process and
 * applied to prom-client when the registry is read (`collect`): a call costs a few additions instead of
 * a dozen label lookups. Label objects are built once per series.
 */
class PendingSeries {
  attempts = 0;
  calls = 0;
  costUsd = 0;
  priced = false;
  prompt = 0;
  cached = 0;
  completion = 0;
  reasoning = 0;
  /** Latencies (s) and pipeline overheads (s) observed since the last flush. */
  readonly latencies: number[] = [];
  readonly overheads: number[] = [];
  readonly attemptLabels: { endpoint: string; model: string; status_class: '2xx' };
  readonly latencyLabels: { endpoint: string; model: string };
  readonly tierLabels: { service_tier: string };
  readonly costLabels: { model: string; route: string };
  readonly tokenLabels: Array<{ model: string; route: string; type: string }>;
  readonly overheadLabels: { endpoint: string };

  constructor(
    readonly endpoint: string,
    readonly model: string,
    readonly route: string,
    readonly tier: string,
  ) {
    this.attemptLabels = { endpoint, model, status_class: '2xx' };
    this.latencyLabels = { endpoint, model };
    this.tierLabels = { service_tier: tier };
    this.costLabels = { model, route };
    this.tokenLabels = ['prompt', 'cached', 'completion', 'reasoning'].map((type) => ({
      model,
      route,
      type,
    }));
    this.overheadLabels = { endpoint };
  }
}

/** Most observations kept per series between two reads of the registry (then applied at once). */
const MAX_PENDING_OBSERVATIONS = 256;

/** Per collector: the flushes to run before prom-client reads it (one per module instance using it). */
const COLLECT_HOOKS = new WeakMap<object, Set<() => void>>();

/** Makes `collector` run `flush` before each read (`get()`, the registry's `metrics()`). */
function flushBeforeCollect(collector: object, flush: () => void): void {
  let hooks = COLLECT_HOOKS.get(collector);
  if (!hooks) {
    const set = new Set<() => void>();
    hooks = set;
    COLLECT_HOOKS.set(collector, set);
    const target = collector as { collect?: (...args: unknown[]) => unknown };
    const previous = target.collect;
    target.collect = function (this: unknown, ...args: unknown[]) {
      for (const f of set) f();
      return previous?.apply(this, args);
    };
  }
  hooks.add(flush);
}

/**
 * The library's Prometheus metrics (prom-client). Labels are low-cardinality by construction: model
 * (a configured or priced model, else `other`), route (the route pattern), status class, window and
 * category names; never users or request IDs. Disabled (`metrics.enabled: false`): every method is a no-op.
 *
 * Serve them from your own controller:
 * @example @Get('metrics') async metrics(@Res() res) { res.type(this.metrics.contentType).send(await this.metrics.metrics()); }
 */
@Injectable()
export class OpenAIMetricsService implements OnModuleDestroy {
  /** The registry holding the metrics. */
  readonly registry: Registry;
  private readonly enabled: boolean;
  private readonly knownModels: Set<string>;
  private readonly upstreamRequests: Counter<'endpoint' | 'model' | 'status_class'>;
  private readonly upstreamErrors: Counter<'endpoint' | 'model' | 'error'>;
  private readonly upstreamLatency: Histogram<'endpoint' | 'model'>;
  private readonly tokens: Counter<'model' | 'route' | 'type'>;
  private readonly cost: Counter<'model' | 'route'>;
  private readonly retries: Counter<'model'>;
  private readonly fallbacks: Counter<'from' | 'to'>;
  private readonly rateLimitRejections: Counter<'kind' | 'limit'>;
  private readonly budgetRejections: Counter<'scope' | 'period'>;
  private readonly moderationChecks: Counter<'direction' | 'outcome'>;
  private readonly moderationFlags: Counter<'direction' | 'category'>;
  private readonly storageErrors: Counter<'store'>;
  private readonly storageDegraded: Gauge<'store'>;
  private readonly unpriced: Counter<'model'>;
  private readonly estimatedUsage: Counter<'model'>;
  private readonly refusals: Counter<'reason'>;
  private readonly tierCalls: Counter<'service_tier'>;
  private readonly tierCost: Counter<'service_tier'>;
  private readonly overheadSeconds: Histogram<'endpoint'>;
  private readonly cacheLookups: Counter<'outcome'>;
  private readonly breakerStateGauge: Gauge<'model'>;
  private readonly breakerTransitions: Counter<'model' | 'to'>;
  private readonly upstreamRemainingRequests: Gauge<'model'>;
  private readonly upstreamRemainingTokens: Gauge<'model'>;
  /** Per-call increments not yet applied to prom-client, by series. */
  private readonly pending = new Map<string, PendingSeries>();
  /** The last remaining requests/tokens per model label, not yet set on the gauges. */
  private readonly pendingRemaining = new Map<string, { requests?: number; tokens?: number }>();
  private readonly flushHook = () => this.flush();
  private lastSeries?: PendingSeries;
  /** The module was destroyed: increments go to prom-client at once (no read flushes them any more). */
  private detached = false;
  /** The collectors whose reads flush the pending increments. */
  private readonly buffered: object[];

  constructor(@Inject(OPENAI_RESOLVED_OPTIONS) options: ResolvedOpenAIOptions) {
    const m = options.metrics;
    this.enabled = m.enabled;
    this.registry = m.registry ?? new Registry();
    const models = options.models;
    this.knownModels = new Set([
      ...Object.keys(DEFAULT_PRICES),
      ...Object.keys(options.pricing.models),
      models.default,
      ...Object.values(models.aliases),
      ...models.fallbacks,
      ...(models.allow ?? []),
      models.moderation,
      models.embedding,
    ]);
    const p = m.prefix;
    const problems: ConfigProblem[] = [];
    // A registry given in `metrics.registry` may already hold these collectors: another OpenAIModule in
    // the process (an app and a worker, a fresh app per e2e test) registered them. Counting into the same
    // ones keeps one family per name in the scrape; a same-named metric of another shape is a clash.
    const collector = <C>(
      name: string,
      type: CollectorShape['type'],
      labelNames: readonly string[],
      create: (registers: Registry[]) => C,
      buckets?: readonly number[],
    ): C => {
      const existing = this.registry.getSingleMetric(name) as unknown as CollectorShape | undefined;
      if (!existing) return create([this.registry]);
      const problem = collectorMismatch(existing, type, labelNames, buckets);
      if (!problem) return existing as unknown as C;
      problems.push({
        path: 'metrics.registry',
        message: `"${name}" is already registered there as ${problem}`,
        fix: `give this module another \`metrics.prefix\`, or remove the other "${name}" from the registry`,
      });
      return create([]);
    };
    const counter = <L extends string>(name: string, help: string, labelNames: L[]) =>
      collector(
        p + name,
        'counter',
        labelNames,
        (registers) => new Counter<L>({ name: p + name, help, labelNames, registers }),
      );
    this.upstreamRequests = counter('upstream_requests_total', 'Upstream (OpenAI) attempts by outcome', [
      'endpoint',
      'model',
      'status_class',
    ]);
    this.upstreamErrors = counter(
      'upstream_errors_total',
      'Calls that failed after retries and fallbacks, by error code',
      ['endpoint', 'model', 'error'],
    );
    this.upstreamLatency = collector(
      `${p}upstream_latency_seconds`,
      'histogram',
      ['endpoint', 'model'],
      (registers) =>
        new Histogram({
          name: `${p}upstream_latency_seconds`,
          help: 'Latency of answered upstream calls, retries included; streams until their last chunk (s)',
          labelNames: ['endpoint', 'model'],
          buckets: m.latencyBuckets,
          registers,
        }),
      m.latencyBuckets,
    );
    this.tokens = counter(
      'tokens_total',
      'Tokens by type: prompt, cached (part of prompt), completion, reasoning (part of completion)',
      ['model', 'route', 'type'],
    );
    this.cost = counter('cost_usd_total', 'Spend in USD from the price table', ['model', 'route']);
    this.retries = counter('retries_total', 'Retries of upstream calls', ['model']);
    this.fallbacks = counter('fallbacks_total', 'Calls answered by a fallback model', ['from', 'to']);
    this.rateLimitRejections = counter(
      'rate_limit_rejections_total',
      'Requests refused by a per-user limit',
      ['kind', 'limit'],
    );
    this.budgetRejections = counter('budget_rejections_total', 'Calls refused by a spend budget', [
      'scope',
      'period',
    ]);
    this.moderationChecks = counter(
      'moderation_checks_total',
      'Moderation checks by outcome (clean, flagged, error)',
      ['direction', 'outcome'],
    );
    this.moderationFlags = counter('moderation_flags_total', 'Flagged moderation categories', [
      'direction',
      'category',
    ]);
    this.storageErrors = counter('storage_errors_total', 'Shared store outages (transitions to degraded)', [
      'store',
    ]);
    this.storageDegraded = collector(
      `${p}storage_degraded`,
      'gauge',
      ['store'],
      (registers) =>
        new Gauge({
          name: `${p}storage_degraded`,
          help: '1 while the shared store is down and its failure policy is in force',
          labelNames: ['store'],
          registers,
        }),
    );
    this.unpriced = counter('unpriced_calls_total', 'Calls to models without a price (cost unknown)', [
      'model',
    ]);
    this.cacheLookups = counter('cache_lookups_total', 'Response cache lookups by outcome (hit, miss)', [
      'outcome',
    ]);
    this.estimatedUsage = counter(
      'estimated_usage_total',
      'Calls whose usage was estimated (a stream cut before its usage chunk, or a reply without usage)',
      ['model'],
    );
    this.overheadSeconds = collector(
      `${p}pipeline_overhead_seconds`,
      'histogram',
      ['endpoint'],
      (registers) =>
        new Histogram({
          name: `${p}pipeline_overhead_seconds`,
          help: "The pipeline's own time per call: total minus upstream attempts and backoff waits (s)",
          labelNames: ['endpoint'],
          buckets: OVERHEAD_BUCKETS,
          registers,
        }),
      OVERHEAD_BUCKETS,
    );
    this.tierCalls = counter(
      'service_tier_calls_total',
      'Answered calls by the service tier that served them',
      ['service_tier'],
    );
    this.tierCost = counter('service_tier_cost_usd_total', 'Spend in USD by service tier', ['service_tier']);
    this.refusals = counter(
      'refusals_total',
      'Requests refused by the library, by reason (rate_limit_exceeded, token_limit_exceeded, budget_exceeded, input_too_large, input_flagged, storage_unavailable, ...)',
      ['reason'],
    );
    const gauge = <L extends string>(name: string, help: string, labelNames: L[]) =>
      collector(
        p + name,
        'gauge',
        labelNames,
        (registers) => new Gauge<L>({ name: p + name, help, labelNames, registers }),
      );
    this.breakerStateGauge = gauge(
      'breaker_state',
      "A model's circuit breaker as this instance last saw it: 0 closed, 1 open, 0.5 half-open",
      ['model'],
    );
    this.breakerTransitions = counter(
      'breaker_transitions_total',
      'Circuit breaker state changes made by this instance, by the state entered',
      ['model', 'to'],
    );
    this.upstreamRemainingRequests = gauge(
      'upstream_remaining_requests',
      "OpenAI's x-ratelimit-remaining-requests of a model, from its last reply",
      ['model'],
    );
    this.upstreamRemainingTokens = gauge(
      'upstream_remaining_tokens',
      "OpenAI's x-ratelimit-remaining-tokens of a model, from its last reply",
      ['model'],
    );
    if (problems.length) throw new OpenAIConfigError(options.environment, problems);
    this.buffered = [
      this.upstreamRequests,
      this.upstreamLatency,
      this.tokens,
      this.cost,
      this.tierCalls,
      this.tierCost,
      this.overheadSeconds,
      this.upstreamRemainingRequests,
      this.upstreamRemainingTokens,
    ];
    if (this.enabled) for (const c of this.buffered) flushBeforeCollect(c, this.flushHook);
  }

  /** Applies the increments summed in process to the prom-client collectors (run before each read). */
  flush(): void {
    for (const s of this.pending.values()) {
      if (s.attempts) this.upstreamRequests.inc(s.attemptLabels, s.attempts);
      if (s.calls) this.tierCalls.inc(s.tierLabels, s.calls);
      if (s.priced) {
        this.tierCost.inc(s.tierLabels, s.costUsd);
        this.cost.inc(s.costLabels, s.costUsd);
      }
      const tokens = [s.prompt, s.cached, s.completion, s.reasoning];
      if (s.calls) for (let i = 0; i < 4; i++) this.tokens.inc(s.tokenLabels[i], tokens[i]);
      for (const v of s.latencies) this.upstreamLatency.observe(s.latencyLabels, v);
      for (const v of s.overheads) this.overheadSeconds.observe(s.overheadLabels, v);
      s.attempts = s.calls = s.costUsd = s.prompt = s.cached = s.completion = s.reasoning = 0;
      s.priced = false;
      s.latencies.length = 0;
      s.overheads.length = 0;
    }
    for (const [model, r] of this.pendingRemaining) {
      if (r.requests !== undefined) this.upstreamRemainingRequests.set({ model }, r.requests);
      if (r.tokens !== undefined) this.upstreamRemainingTokens.set({ model }, r.tokens);
    }
    this.pendingRemaining.clear();
  }

  /** Applies what is pending and stops flushing into shared collectors (another module may keep them). */
  onModuleDestroy(): void {
    this.flush();
    // Calls still in flight (a graceful shutdown lets them finish) are applied as they end: no read of the
    // registry flushes this service any more.
    this.detached = true;
    for (const c of this.buffered) COLLECT_HOOKS.get(c)?.delete(this.flushHook);
  }

  /** The pending series of a call (labels built once per series; bounded by the labels' cardinality). */
  private series(endpoint: string, model: string, route: string, tier: string): PendingSeries {
    // The calls of a route mostly hit the series of the one before: compared without building a key.
    const last = this.lastSeries;
    if (
      last &&
      last.endpoint === endpoint &&
      last.model === model &&
      last.route === route &&
      last.tier === tier
    )
      return last;
    const key = `${endpoint}\u0000${model}\u0000${route}\u0000${tier}`;
    let s = this.pending.get(key);
    if (!s) this.pending.set(key, (s = new PendingSeries(endpoint, model, route, tier)));
    this.lastSeries = s;
    return s;
  }

  /** OpenAI's remaining requests and tokens of a model, from a reply's `x-ratelimit-*` headers. */
  upstreamRemaining(model: string, requests: number | undefined, tokens: number | undefined): void {
    if (!this.enabled) return;
    const ml = this.modelLabel(model);
    let r = this.pendingRemaining.get(ml);
    if (!r) this.pendingRemaining.set(ml, (r = {}));
    if (requests !== undefined) r.requests = requests;
    if (tokens !== undefined) r.tokens = tokens;
    if (this.detached) this.flush();
  }

  /** A circuit breaker's state as seen; `changed`: this instance made the transition (counted). */
  breakerState(model: string, state: 'closed' | 'open' | 'half-open', changed: boolean): void {
    if (!this.enabled) return;
    const ml = this.modelLabel(model);
    this.breakerStateGauge.set({ model: ml }, state === 'open' ? 1 : state === 'half-open' ? 0.5 : 0);
    if (changed) this.breakerTransitions.inc({ model: ml, to: state });
  }

  /** Content type of `metrics()`. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** The Prometheus text exposition of the registry. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /**
   * A model name safe as a label: configured or priced models keep their name, an unlisted snapshot of
   * one of them is labelled by its base name (the client chooses the date, so it must not become a
   * label), any other is `other`.
   */
  modelLabel(model: string): string {
    if (this.knownModels.has(model)) return model;
    const base = model.replace(/-(?:\d{4}-\d{2}-\d{2}|\d{4})$/, '');
    return this.knownModels.has(base) ? base : 'other';
  }

  attempt(call: UpstreamCall, model: string, status: StatusClass, retry: boolean): void {
    if (!this.enabled) return;
    if (status === '2xx' && !retry) {
      this.series(call.endpoint, this.modelLabel(model), call.route ?? 'none', 'default').attempts++;
      if (this.detached) this.flush();
      return;
    }
    this.upstreamRequests.inc({
      endpoint: call.endpoint,
      model: this.modelLabel(model),
      status_class: status,
    });
    if (retry) this.retries.inc({ model: this.modelLabel(model) });
  }

  succeeded(
    call: UpstreamCall,
    model: string,
    latencyMs: number,
    usage: NormalizedUsage,
    costUsd: number | null,
    fallbackFrom?: string,
    serviceTier?: string,
  ): void {
    if (!this.enabled) return;
    const ml = this.modelLabel(model);
    const s = this.series(call.endpoint, ml, call.route ?? 'none', tierLabel(serviceTier));
    s.calls++;
    if (costUsd !== null) {
      s.costUsd += costUsd;
      s.priced = true;
    }
    s.latencies.push(latencyMs / 1000);
    s.prompt += usage.prompt_tokens;
    s.cached += usage.cached_tokens;
    s.completion += usage.completion_tokens;
    s.reasoning += usage.reasoning_tokens;
    if (this.detached || s.latencies.length >= MAX_PENDING_OBSERVATIONS) this.flush();
    if (usage.estimated) this.estimatedUsage.inc({ model: ml });
    if (fallbackFrom) this.fallbacks.inc({ from: this.modelLabel(fallbackFrom), to: ml });
  }

  failed(call: UpstreamCall, error: string): void {
    if (!this.enabled) return;
    this.upstreamErrors.inc({ endpoint: call.endpoint, model: this.modelLabel(call.model), error });
  }

  rateLimited(kind: 'requests' | 'tokens', limit: string): void {
    if (this.enabled) this.rateLimitRejections.inc({ kind, limit });
  }

  budgetRejected(scope: 'user' | 'project', period: 'day' | 'month'): void {
    if (this.enabled) this.budgetRejections.inc({ scope, period });
  }

  moderation(
    direction: 'input' | 'output',
    outcome: 'clean' | 'flagged' | 'error',
    categories: readonly string[] = [],
  ): void {
    if (!this.enabled) return;
    this.moderationChecks.inc({ direction, outcome });
    for (const category of categories) this.moderationFlags.inc({ direction, category });
  }

  storageTransition(store: string, degraded: boolean): void {
    if (!this.enabled) return;
    this.storageDegraded.set({ store }, degraded ? 1 : 0);
    if (degraded) this.storageErrors.inc({ store });
  }

  cache(outcome: 'hit' | 'miss'): void {
    if (this.enabled) this.cacheLookups.inc({ outcome });
  }

  /** The pipeline's own time of one call (ms). */
  overhead(call: UpstreamCall, ms: number): void {
    if (!this.enabled) return;
    const s = this.series(call.endpoint, this.modelLabel(call.model), call.route ?? 'none', 'default');
    s.overheads.push(ms / 1000);
    if (this.detached || s.overheads.length >= MAX_PENDING_OBSERVATIONS) this.flush();
  }

  /** A request refused by the library (429, 413, 422, 503), by the error code it was answered with. */
  refused(reason: string): void {
    if (this.enabled) this.refusals.inc({ reason });
  }

  unpricedCall(model: string): void {
    if (this.enabled) this.unpriced.inc({ model: this.modelLabel(model) });
  }
}
