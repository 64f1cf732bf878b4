import { HttpException, Inject, Injectable, Logger, Optional } from '@nestjs/common';
import { toFile } from 'openai';
import { BudgetService } from '../budget/budget.service.js';
import { CallPipeline, estimateUsage } from '../call/call-pipeline.js';
import { ZERO_USAGE } from '../call/upstream-call.js';
import type { EndpointAdapter } from '../call/endpoint-adapter.js';
import { RefusalRecorder } from '../call/refusal.recorder.js';
import type { CallReservation, NormalizedUsage } from '../call/upstream-call.js';
import { chatCompletionsAdapter } from '../endpoints/chat-completions/chat-completions.adapter.js';
import { responsesAdapter } from '../endpoints/responses/responses.adapter.js';
import { CallAbortedException, mapUpstreamError } from '../errors/map-upstream-error.js';
import {
  OpenAIBadRequestException,
  OpenAIUpstreamTimeoutException,
} from '../errors/openai-http.exceptions.js';
import { OpenAIProductionError } from '../errors/openai-production.error.js';
import { redactSecrets } from '../logging/redact.js';
import { OPENAI_STORE } from '../openai.constants.js';
import { PricingService } from '../pricing/pricing.service.js';
import type { OpenAIStore } from '../storage/openai-store.interface.js';
import { isRetryable } from '../call/retry-policy.js';
import { UsageService } from '../usage/usage.service.js';
import { isRecord } from '../utils/is-record.js';
import type {
  BatchCollectOptions,
  BatchEndpoint,
  BatchEndpoints,
  BatchOutcome,
  BatchRequest,
  BatchRequestError,
  BatchResult,
  BatchSubmitOptions,
  BatchWaitOptions,
  OpenAIBatch,
  SubmittedBatch,
} from './batch.types.js';

/** The upstream path of each endpoint, as a batch line's `url` and the batch's `endpoint`. */
const PATHS = { 'chat.completions': '/v1/chat/completions', responses: '/v1/responses' } as const;
const ADAPTERS: { [E in BatchEndpoint]: EndpointAdapter<BatchEndpoints[E]['response']> } = {
  'chat.completions': chatCompletionsAdapter,
  responses: responsesAdapter,
};
const TERMINAL: ReadonlySet<string> = new Set(['completed', 'failed', 'expired', 'cancelled']);
/** OpenAI's limit of requests per batch. */
const MAX_REQUESTS = 50_000;
/** How long the "accounted" mark of a collected batch is kept (its output files expire after 30 days). */
const ACCOUNTED_TTL_MS = 32 * 86_400_000;
const DEFAULTS = {
  deadlineMs: 25 * 3_600_000,
  pollIntervalMs: 1_000,
  maxPollIntervalMs: 60_000,
  backoffFactor: 2,
};

/** `collect()` of a batch that has not finished yet. */
export class BatchNotFinishedError extends OpenAIProductionError {
  constructor(
    readonly batchId: string,
    readonly status: string,
  ) {
    super(`Batch ${batchId} is ${status}, not finished: wait() for it (or cancel() it) before collect()`);
  }
}

/** What this instance remembers of a batch it submitted, until it is collected. */
interface Tracked {
  endpoint: BatchEndpoint;
  user?: string;
  route: string;
  /** Per `custom_id`: the model and prompt tokens counted before sending (estimates when usage is missing). */
  plans: Map<string, { model: string; promptTokens: number }>;
  maxCostUsd: number | null;
  reservation?: CallReservation;
  submittedAt: number;
}

/** One line of an output or error file. */
interface FileLine {
  custom_id?: unknown;
  response?: { status_code?: unknown; request_id?: unknown; body?: unknown } | null;
  error?: { code?: unknown; message?: unknown } | null;
}

const sum = (a: NormalizedUsage, b: NormalizedUsage): NormalizedUsage => ({
  prompt_tokens: a.prompt_tokens + b.prompt_tokens,
  cached_tokens: a.cached_tokens + b.cached_tokens,
  completion_tokens: a.completion_tokens + b.completion_tokens,
  reasoning_tokens: a.reasoning_tokens + b.reasoning_tokens,
  total_tokens: a.total_tokens + b.total_tokens,
  estimated: a.estimated || b.estimated,
});

/** Sleeps `ms`, or rejects with a CallAbortedException when `signal` aborts first. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new CallAbortedException(signal.reason));
    const onAbort = () => {
      clearTimeout(timer);
      reject(new CallAbortedException(signal!.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The Batch API (half the price, results within 24 hours) with the same policy as a normal call: every body is
 * prepared by the call pipeline (model policy and aliases, output cap, input caps and the prompt-token measure,
 * hashed `safety_identifier`, `store: false` for responses); the batch's highest cost at the batch price is
 * reserved against the user's and the project's budgets before anything is uploaded; results are matched back by
 * `custom_id`, recorded in the usage ledger at the batch price (once per batch, across instances), and the budget
 * hold is settled to their real cost (released when nothing ran).
 *
 * @example
 * const result = await batches.run('chat.completions', [
 *   { customId: 'q1', body: { messages: [{ role: 'user', content: 'Summarize ...' }], max_tokens: 200 } },
 *   { customId: 'q2', body: { messages: [{ role: 'user', content: 'Translate ...' }] } },
 * ], { user: 'u42', pollIntervalMs: 30_000 });
 * for (const o of result.outcomes) if (o.status === 'succeeded') save(o.customId, o.text);
 *
 * // Or in steps, across processes: submit now, collect later (by id).
 * const { id } = await batches.submit('responses', requests, { user: 'u42' });
 * await batches.wait(id, { deadlineMs: 3_600_000 });
 * const later = await batches.collect(id, requests);
 */
@Injectable()
export class OpenAIBatchService {
  private readonly logger = new Logger('OpenAIBatch');
  private readonly tracked = new Map<string, Tracked>();

  constructor(
    private readonly pipeline: CallPipeline,
    private readonly pricing: PricingService,
    private readonly budgets: BudgetService,
    private readonly usage: UsageService,
    @Inject(OPENAI_STORE) private readonly store: OpenAIStore,
    @Optional() private readonly refusals?: RefusalRecorder,
  ) {}

  /**
   * Prepares every request, reserves the batch's highest cost at the batch price, uploads the JSONL input file and
   * creates the batch (`completion_window: '24h'`). Nothing is uploaded when a request is refused or the budget
   * cannot cover the batch.
   * @throws OpenAIBadRequestException (400: no requests, a repeated or empty `customId`, a bad body),
   *   ModelNotAllowedException (400), InputTooLargeException (413), BudgetExceededException (429),
   *   UnpricedModelException, and the mapped upstream errors of the upload and creation (502, 504, ...).
   */
  async submit<E extends BatchEndpoint>(
    endpoint: E,
    requests: ReadonlyArray<BatchRequest<E>>,
    options: BatchSubmitOptions = {},
  ): Promise<SubmittedBatch> {
    if (!PATHS[endpoint]) {
      throw new OpenAIBadRequestException(
        `A batch runs 'chat.completions' or 'responses', not ${String(endpoint)}`,
        {
          error: 'invalid_request',
        },
      );
    }
    if (!Array.isArray(requests) || requests.length === 0 || requests.length > MAX_REQUESTS) {
      throw new OpenAIBadRequestException(`A batch has 1 to ${MAX_REQUESTS} requests`, {
        error: 'invalid_request',
      });
    }
    const route = options.route ?? 'batch';
    const callOptions = { user: options.user, route };
    const plans = new Map<string, { model: string; promptTokens: number }>();
    const lines: string[] = [];
    let user: string | undefined;
    let maxCostUsd: number | null = 0;
    let unpriced: string | undefined;
    for (const r of requests) {
      const customId = r?.customId;
      if (typeof customId !== 'string' || customId === '' || plans.has(customId)) {
        throw new OpenAIBadRequestException('Every request of a batch needs its own non-empty customId', {
          error: 'invalid_request',
        });
      }
      // The same prepare step as a normal call: policy, aliases, output cap, input caps, hashed identity.
      const prep =
        endpoint === 'chat.completions'
          ? this.pipeline.prepareChat(
              r.body as BatchEndpoints['chat.completions']['request'],
              callOptions,
              false,
            )
          : this.pipeline.prepareResponses(
              r.body as BatchEndpoints['responses']['request'],
              callOptions,
              false,
            );
      const { call, body } = prep;
      delete body.stream;
      delete body.stream_options;
      user = call.user;
      plans.set(customId, { model: call.model, promptTokens: call.promptTokens });
      // A batch line runs on its model only (no fallbacks upstream), so that model is the dearest candidate.
      const max = this.pricing.maxCost(call.model, call.promptTokens, call.maxOutputTokens, 'batch');
      if (max === null) unpriced ??= call.model;
      else if (maxCostUsd !== null) maxCostUsd += max;
      lines.push(JSON.stringify({ custom_id: customId, method: 'POST', url: PATHS[endpoint], body }));
    }
    if (unpriced) maxCostUsd = null;
    if (maxCostUsd !== null) maxCostUsd = Math.round(maxCostUsd * 1e12) / 1e12;
    let reservation: CallReservation | undefined;
    try {
      reservation =
        (await this.budgets.reserveCost(user, maxCostUsd, unpriced ?? plans.values().next().value!.model)) ??
        undefined;
    } catch (err) {
      throw this.refusals ? this.refusals.record(err) : err;
    }
    let batch: OpenAIBatch;
    let inputFileId: string;
    try {
      const file = await this.pipeline.client.files.create(
        {
          file: await toFile(Buffer.from(`${lines.join('\n')}\n`, 'utf8'), `batch-${Date.now()}.jsonl`, {
            type: 'application/jsonl',
          }),
          purpose: 'batch',
        },
        { signal: options.signal, timeout: this.pipeline.options.timeouts.deadlineMs },
      );
      inputFileId = file.id;
      batch = await this.pipeline.client.batches.create(
        {
          input_file_id: file.id,
          endpoint: PATHS[endpoint],
          completion_window: '24h',
          ...(options.metadata ? { metadata: options.metadata } : {}),
        },
        { signal: options.signal },
      );
    } catch (err) {
      await reservation?.release();
      throw this.fail('submitting a batch failed', err, options.signal, {
        user,
        route,
        requests: lines.length,
      });
    }
    this.tracked.set(batch.id, {
      endpoint,
      user,
      route,
      plans,
      maxCostUsd,
      reservation,
      submittedAt: performance.now(),
    });
    this.log({
      msg: 'openai batch submitted',
      batch_id: batch.id,
      endpoint,
      service_tier: 'batch',
      user,
      route,
      requests: lines.length,
      max_cost_usd: maxCostUsd,
      input_file_id: inputFileId,
    });
    return { id: batch.id, endpoint, inputFileId, requestCount: lines.length, maxCostUsd, batch };
  }

  /**
   * Polls the batch with exponential backoff until it is `completed`, `failed`, `expired` or `cancelled`. A poll
   * that fails on a retryable error (429, 5xx, network) is retried at the next tick.
   * @throws OpenAIUpstreamTimeoutException (504) past `deadlineMs`, CallAbortedException (499) when `signal`
   *   aborts (the batch keeps running upstream either way), a mapped upstream error for a non-retryable failure.
   */
  async wait(batchId: string, options: BatchWaitOptions = {}): Promise<OpenAIBatch> {
    const { deadlineMs, pollIntervalMs, maxPollIntervalMs, backoffFactor } = { ...DEFAULTS, ...options };
    const signal = options.signal;
    const deadline = performance.now() + deadlineMs;
    let interval = pollIntervalMs;
    for (;;) {
      if (signal?.aborted) throw new CallAbortedException(signal.reason);
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new OpenAIUpstreamTimeoutException(
          `Batch ${batchId} did not finish within ${deadlineMs} ms; it keeps running upstream: collect() it later or cancel() it`,
        );
      }
      const attemptMs = Math.max(1, Math.ceil(Math.min(this.pipeline.options.timeouts.attemptMs, left)));
      const timeout = AbortSignal.timeout(attemptMs);
      try {
        const batch = await this.pipeline.client.batches.retrieve(batchId, {
          signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
          timeout: attemptMs,
        });
        if (TERMINAL.has(batch.status)) return batch;
      } catch (err) {
        if (signal?.aborted) throw new CallAbortedException(signal.reason);
        // A poll that timed out (or ran into the deadline) is retried, as a retryable failure is.
        if (!timeout.aborted && !isRetryable(err)) {
          throw this.fail('polling a batch failed', err, signal, { batch_id: batchId });
        }
        this.logger.warn({
          msg: 'polling a batch failed; retrying',
          batch_id: batchId,
          error: this.describe(err),
        });
      }
      await sleep(Math.max(0, Math.min(interval, deadline - performance.now())), signal);
      interval = Math.min(interval * backoffFactor, maxPollIntervalMs);
    }
  }

  /**
   * Downloads a finished batch's output and error files and matches them to the requests by `custom_id`: each
   * request gets exactly one outcome (`succeeded`, `failed` or `missing`). The first collect of a batch (across
   * instances sharing the store) records the usage of its succeeded requests in the ledger at the batch price and
   * settles the budget hold this instance placed (released when nothing succeeded); later ones only read.
   * @param batch the batch's id or the batch object `wait()` returned.
   * @param requests the requests (or their `customId`s) of the batch; default: those this instance submitted, else
   *   every `custom_id` found in the files.
   * @throws BatchNotFinishedError when the batch is not finished; mapped upstream errors of the downloads.
   */
  async collect<E extends BatchEndpoint = BatchEndpoint>(
    batch: string | OpenAIBatch,
    requests?: ReadonlyArray<string | { customId: string }>,
    options: BatchCollectOptions = {},
  ): Promise<BatchResult<E>> {
    const b = typeof batch === 'string' ? await this.retrieve(batch, { signal: options.signal }) : batch;
    if (!TERMINAL.has(b.status)) throw new BatchNotFinishedError(b.id, b.status);
    const tracked = this.tracked.get(b.id);
    const endpoint = (tracked?.endpoint ??
      (b.endpoint === PATHS.responses ? 'responses' : 'chat.completions')) as E;
    const adapter = ADAPTERS[endpoint] as EndpointAdapter<BatchEndpoints[E]['response']>;
    const [output, errors] = await Promise.all([
      this.download(b.output_file_id, options.signal),
      this.download(b.error_file_id, options.signal),
    ]);
    const found = new Map<string, FileLine>();
    for (const line of [...output, ...errors]) {
      if (typeof line.custom_id === 'string' && !found.has(line.custom_id)) found.set(line.custom_id, line);
    }
    const expected = requests
      ? requests.map((r) => (typeof r === 'string' ? r : r.customId))
      : tracked
        ? [...tracked.plans.keys()]
        : [...found.keys()];
    const expectedSet = new Set(expected);
    const outcomes: Array<BatchOutcome<E>> = [];
    const counts = { succeeded: 0, failed: 0, missing: 0 };
    let usage: NormalizedUsage = { ...ZERO_USAGE };
    let costUsd: number | null = 0;
    const priced: Array<{ model: string; usage: NormalizedUsage; costUsd: number | null }> = [];
    for (const customId of expected) {
      const line = found.get(customId);
      const outcome = line ? this.outcome<E>(customId, line, adapter, tracked) : undefined;
      if (!outcome) {
        outcomes.push({ customId, status: 'missing' });
        counts.missing++;
        continue;
      }
      outcomes.push(outcome);
      counts[outcome.status === 'succeeded' ? 'succeeded' : 'failed']++;
      if (outcome.status === 'succeeded') {
        usage = sum(usage, outcome.usage);
        costUsd = costUsd === null || outcome.costUsd === null ? null : costUsd + outcome.costUsd;
        priced.push(outcome);
      }
    }
    if (costUsd !== null) costUsd = Math.round(costUsd * 1e12) / 1e12;
    const unexpected = [...found.keys()].filter((id) => !expectedSet.has(id));
    const accounted = await this.store.setIfAbsent(`batch:accounted:${b.id}`, '1', ACCOUNTED_TTL_MS);
    const user = tracked?.user ?? options.user;
    const route = tracked?.route ?? options.route ?? 'batch';
    if (accounted) {
      for (const p of priced)
        this.usage.record({
          user,
          route,
          model: p.model,
          usage: p.usage,
          costUsd: p.costUsd,
          serviceTier: 'batch',
        });
    }
    if (tracked?.reservation) {
      // The hold lives here only, so this instance charges the budget even when another one recorded the ledger
      // first: settled to the real cost, or released when nothing ran.
      if (counts.succeeded > 0) {
        await tracked.reservation.settle({
          model: priced[0]!.model,
          usage,
          costUsd,
          attempts: 1,
          latencyMs: performance.now() - tracked.submittedAt,
        });
      } else {
        await tracked.reservation.release();
      }
    }
    this.tracked.delete(b.id);
    this.log({
      msg: 'openai batch',
      batch_id: b.id,
      endpoint,
      status: b.status,
      service_tier: 'batch',
      user,
      route,
      requests: expected.length,
      succeeded: counts.succeeded,
      failed: counts.failed,
      missing: counts.missing,
      unexpected: unexpected.length || undefined,
      prompt_tokens: usage.prompt_tokens,
      cached_tokens: usage.cached_tokens,
      completion_tokens: usage.completion_tokens,
      reasoning_tokens: usage.reasoning_tokens || undefined,
      cost_usd: costUsd,
      max_cost_usd: tracked?.maxCostUsd,
      usage_estimated: usage.estimated || undefined,
      accounted,
    });
    return {
      id: b.id,
      endpoint,
      status: b.status,
      batch: b,
      outcomes,
      byCustomId: new Map(outcomes.map((o) => [o.customId, o])),
      counts,
      usage,
      costUsd,
      unexpected,
      accounted,
    };
  }

  /** `submit()`, `wait()` and `collect()` in one call. On a deadline or abort the batch keeps running (see `wait`). */
  async run<E extends BatchEndpoint>(
    endpoint: E,
    requests: ReadonlyArray<BatchRequest<E>>,
    options: BatchSubmitOptions & BatchWaitOptions = {},
  ): Promise<BatchResult<E>> {
    const submitted = await this.submit(endpoint, requests, options);
    const batch = await this.wait(submitted.id, options);
    return this.collect<E>(batch, undefined, { signal: options.signal });
  }

  /** The batch as OpenAI has it now (one poll). */
  async retrieve(batchId: string, options: { signal?: AbortSignal } = {}): Promise<OpenAIBatch> {
    try {
      return await this.pipeline.client.batches.retrieve(batchId, { signal: options.signal });
    } catch (err) {
      throw this.fail('retrieving a batch failed', err, options.signal, { batch_id: batchId });
    }
  }

  /**
   * Asks OpenAI to cancel the batch (it goes `cancelling`, then `cancelled`, within minutes). Then `wait()` and
   * `collect()` it: requests that ran before the cancellation are billed and recorded, the rest of the budget hold is
   * released.
   */
  async cancel(batchId: string, options: { signal?: AbortSignal } = {}): Promise<OpenAIBatch> {
    try {
      const batch = await this.pipeline.client.batches.cancel(batchId, { signal: options.signal });
      this.log({ msg: 'openai batch cancel requested', batch_id: batchId, status: batch.status });
      return batch;
    } catch (err) {
      throw this.fail('cancelling a batch failed', err, options.signal, { batch_id: batchId });
    }
  }

  /** The outcome of a request from its line, or `undefined` when the line says nothing usable. */
  private outcome<E extends BatchEndpoint>(
    customId: string,
    line: FileLine,
    adapter: EndpointAdapter<BatchEndpoints[E]['response']>,
    tracked: Tracked | undefined,
  ): BatchOutcome<E> | undefined {
    const res = isRecord(line.response) ? line.response : undefined;
    const openaiRequestId = typeof res?.request_id === 'string' ? res.request_id : undefined;
    const status = typeof res?.status_code === 'number' ? res.status_code : undefined;
    const ids = openaiRequestId ? { openaiRequestId } : {};
    if (status !== undefined && status >= 200 && status < 300 && isRecord(res!.body) && !line.error) {
      const response = res!.body as unknown as BatchEndpoints[E]['response'];
      const plan = tracked?.plans.get(customId);
      const text = adapter.text(response);
      const model = typeof res!.body.model === 'string' ? res!.body.model : (plan?.model ?? 'unknown');
      const usage = adapter.usage(response) ?? estimateUsage(plan?.promptTokens ?? 0, text);
      const costUsd = this.pricing.cost(model, usage, 'batch');
      return {
        customId,
        status: 'succeeded',
        response,
        text,
        model,
        usage,
        costUsd,
        ...ids,
      } as BatchOutcome<E>;
    }
    const bodyError = isRecord(res?.body) && isRecord(res.body.error) ? res.body.error : undefined;
    const err = isRecord(line.error) ? line.error : bodyError;
    if (!err && status === undefined) return undefined;
    const error: BatchRequestError = {
      code: typeof err?.code === 'string' ? err.code : null,
      message:
        typeof err?.message === 'string' ? err.message : `The request failed (HTTP ${status ?? 'unknown'})`,
      ...(status !== undefined ? { statusCode: status } : {}),
    };
    return { customId, status: 'failed', error, ...ids };
  }

  /** The lines of an output or error file (none without a file); a line that is not JSON is logged and skipped. */
  private async download(fileId: string | null | undefined, signal?: AbortSignal): Promise<FileLine[]> {
    if (!fileId) return [];
    let text: string;
    try {
      const res = await this.pipeline.client.files.content(fileId, {
        signal,
        timeout: this.pipeline.options.timeouts.deadlineMs,
      });
      text = await res.text();
    } catch (err) {
      throw this.fail('downloading a batch file failed', err, signal, { file_id: fileId });
    }
    const out: FileLine[] = [];
    let broken = 0;
    for (const raw of text.split('\n')) {
      if (raw.trim() === '') continue;
      try {
        const parsed: unknown = JSON.parse(raw);
        if (isRecord(parsed)) out.push(parsed as FileLine);
        else broken++;
      } catch {
        broken++;
      }
    }
    if (broken)
      this.logger.warn({ msg: 'batch file lines that are not JSON were skipped', file_id: fileId, broken });
    return out;
  }

  /** Logs a failure and returns the exception to throw (an abort is a 499, SDK errors are mapped). */
  private fail(
    msg: string,
    err: unknown,
    signal: AbortSignal | undefined,
    fields: Record<string, unknown>,
  ): HttpException {
    const mapped =
      signal?.aborted && !(err instanceof HttpException)
        ? new CallAbortedException(err)
        : mapUpstreamError(err);
    this.logger.error({ msg, ...fields, status: mapped.getStatus(), error: this.describe(err) });
    return mapped;
  }

  private describe(err: unknown): string {
    return redactSecrets(String((err as Error)?.message ?? err));
  }

  private log(line: Record<string, unknown>): void {
    if (!this.pipeline.options.logging.calls) return;
    for (const k of Object.keys(line)) if (line[k] === undefined) delete line[k];
    this.logger.log(line);
  }
}
