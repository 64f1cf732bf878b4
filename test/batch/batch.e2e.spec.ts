import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  BatchNotFinishedError,
  BudgetService,
  OpenAIBatchService,
  OpenAIModule,
  PricingService,
  UsageService,
  hashUserId,
  type BatchRequest,
  type OpenAIModuleOptions,
} from '../../lib/index.js';
import { FakeOpenAIServer, countChatPromptTokens } from '../../lib/testing/index.js';
import { CapturingLogger } from '../support/capturing-logger.js';
import { fixtureOptions } from '../support/fixture-app.js';

const MINI = 'gpt-4o-mini-2024-07-18';
const BIG = 'gpt-4o-2024-08-06';
const SALT = 'batch-salt';

function options(baseURL: string, extra: OpenAIModuleOptions = {}): OpenAIModuleOptions {
  return fixtureOptions(baseURL, 'test-key', {
    models: { default: 'mini', aliases: { mini: MINI, big: BIG }, pinning: 'enforce', fallbacks: [] },
    maxTokens: { cap: 500, default: 200, overCap: 'clamp' },
    identity: { salt: SALT },
    moderation: { enabled: false },
    ...extra,
  } as OpenAIModuleOptions);
}

interface Handle {
  app: INestApplication;
  batches: OpenAIBatchService;
  pricing: PricingService;
  usage: UsageService;
  budgets: BudgetService;
  logger: CapturingLogger;
}

async function startApp(opts: OpenAIModuleOptions): Promise<Handle> {
  const logger = new CapturingLogger();
  const moduleRef = await Test.createTestingModule({ imports: [OpenAIModule.forRoot(opts)] })
    .setLogger(logger)
    .compile();
  const app = moduleRef.createNestApplication({ logger });
  await app.init();
  return {
    app,
    batches: app.get(OpenAIBatchService),
    pricing: app.get(PricingService),
    usage: app.get(UsageService),
    budgets: app.get(BudgetService),
    logger,
  };
}

const chatRequests = (n: number, model = 'mini'): Array<BatchRequest<'chat.completions'>> =>
  Array.from({ length: n }, (_, i) => ({
    customId: `q${i}`,
    body: { model, messages: [{ role: 'user' as const, content: `question number ${i}` }], max_tokens: 50 },
  }));

/** Lines of a file the fake holds. */
const fileLines = (fake: FakeOpenAIServer, id: string | null | undefined) =>
  (fake.files.get(id ?? '')?.content ?? '')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, any>);

const polls = (fake: FakeOpenAIServer, id: string) =>
  fake.requests.filter((r) => r.method === 'GET' && r.path === `/v1/batches/${id}`);

/** Waits until the fake has seen `n` polls of batch `id`. */
async function untilPolled(fake: FakeOpenAIServer, id: string, n = 1): Promise<void> {
  for (let i = 0; i < 400 && polls(fake, id).length < n; i++) await new Promise((r) => setTimeout(r, 5));
  expect(polls(fake, id).length).toBeGreaterThanOrEqual(n);
}

const micro = (usd: number) => Math.ceil(Math.round(usd * 1e9) / 1e3);

describe('OpenAIBatchService: batches that complete (polls), through the SDK to the fake', () => {
  let fake: FakeOpenAIServer;
  let h: Handle;
  const failing = new Set<string>();
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({
      batchCompletesAfterPolls: 4,
      batchFailedLines: (id) => failing.has(id),
    });
    h = await startApp(options(fake.baseURL));
  });
  afterAll(async () => {
    await h?.app.close();
    await fake?.close();
  });
  afterEach(() => {
    failing.clear();
    fake.reset();
  });

  it('runs a batch of chat requests: prepared like calls, polled with backoff, matched by custom_id, priced at half', async () => {
    const requests = chatRequests(6);
    requests[5]!.body.model = 'big';
    requests[4]!.body.max_tokens = 5_000; // above the cap: clamped, as for a call
    failing.add('q2');
    const result = await h.batches.run('chat.completions', requests, {
      user: 'u-chat',
      metadata: { job: 'nightly' },
      pollIntervalMs: 20,
      maxPollIntervalMs: 200,
    });

    // One upload (multipart, purpose batch) and one batch creation.
    const uploads = fake.requestsTo('/v1/files');
    expect(uploads).toHaveLength(1);
    expect(String(uploads[0]!.headers['content-type'])).toMatch(/^multipart\/form-data; boundary=/);
    const created = fake.requestsTo('/v1/batches');
    expect(created).toHaveLength(1);
    expect(created[0]!.body).toMatchObject({
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
      metadata: { job: 'nightly' },
    });
    const input = fileLines(fake, created[0]!.body.input_file_id);
    expect(input.map((l) => l.custom_id)).toEqual(requests.map((r) => r.customId));
    for (const [i, line] of input.entries()) {
      expect(line.method).toBe('POST');
      expect(line.url).toBe('/v1/chat/completions');
      expect(line.body.model).toBe(i === 5 ? BIG : MINI); // aliases resolved by the model policy
      expect(line.body.max_tokens).toBe(i === 4 ? 500 : 50); // the output cap, on the field the request used
      expect(line.body.safety_identifier).toBe(hashUserId('u-chat', SALT));
    }

    // Polled until terminal, waits growing (backoff): 20, 40, 80 ms between the 4 polls.
    const seen = polls(fake, result.id);
    expect(seen).toHaveLength(4);
    // Timers never fire early, so each gap is at least its planned wait (a busy machine may stretch one,
    // which says nothing about the backoff: only lower bounds are asserted).
    const gaps = seen.slice(1).map((p, i) => p.at - seen[i]!.at);
    expect(gaps[0]!).toBeGreaterThanOrEqual(19);
    expect(gaps[1]!).toBeGreaterThanOrEqual(39);
    expect(gaps[2]!).toBeGreaterThanOrEqual(79);

    // The output file is not in request order; results are matched back by custom_id anyway.
    expect(result.status).toBe('completed');
    const outputIds = fileLines(fake, result.batch.output_file_id).map((l) => l.custom_id);
    expect(outputIds).not.toEqual(requests.map((r) => r.customId).filter((id) => id !== 'q2'));
    expect(result.outcomes.map((o) => o.customId)).toEqual(requests.map((r) => r.customId));
    expect(result.counts).toEqual({ succeeded: 5, failed: 1, missing: 0 });
    expect(result.outcomes[2]).toMatchObject({
      status: 'failed',
      error: { code: 'server_error', statusCode: 500 },
    });
    expect(result.outcomes.map((o) => o.status)).toEqual([
      'succeeded',
      'succeeded',
      'failed',
      'succeeded',
      'succeeded',
      'succeeded',
    ]);
    for (const o of result.outcomes) {
      if (o.status !== 'succeeded') continue;
      const i = Number(o.customId.slice(1));
      expect(o.text).toBe(`Echo: question number ${i}`);
      expect(o.response.choices[0]!.message.content).toBe(o.text);
      expect(o.model).toBe(i === 5 ? BIG : MINI);
      expect(o.openaiRequestId).toMatch(/^req_/);
      // The batch price: half the standard price, from PricingService.
      expect(o.costUsd).toBe(h.pricing.cost(o.model, o.usage, 'batch'));
      expect(o.costUsd!).toBeCloseTo(h.pricing.cost(o.model, o.usage)! / 2, 12);
      expect(o.usage.prompt_tokens).toBeGreaterThan(0);
    }
    expect(result.byCustomId.get('q3')).toBe(result.outcomes[3]);
    expect(result.accounted).toBe(true);

    // The ledger: the 5 succeeded requests (the failed one is not billed), at the batch price, under route `batch`.
    const succeeded = result.outcomes.flatMap((o) => (o.status === 'succeeded' ? [o] : []));
    const expectedCost = succeeded.reduce((s, o) => s + o.costUsd!, 0);
    const standardCost = succeeded.reduce((s, o) => s + h.pricing.cost(o.model, o.usage)!, 0);
    expect(result.costUsd!).toBeCloseTo(expectedCost, 12);
    expect(expectedCost).toBeCloseTo(standardCost / 2, 12);
    const totals = await h.usage.totals('u-chat', 'day');
    expect(totals.requests).toBe(5);
    expect(totals.prompt_tokens).toBe(result.usage.prompt_tokens);
    expect(totals.completion_tokens).toBe(result.usage.completion_tokens);
    expect(totals.cost_usd).toBeCloseTo(expectedCost, 9);
    expect(totals.by_route.batch?.requests).toBe(5);
    expect(totals.by_model[BIG]?.requests).toBe(1);

    // One log line for the batch, labelled service_tier batch.
    const line = h.logger.records('openai batch').find((l) => l.batch_id === result.id);
    expect(line).toMatchObject({
      service_tier: 'batch',
      status: 'completed',
      user: 'u-chat',
      requests: 6,
      succeeded: 5,
      failed: 1,
      missing: 0,
    });
    expect(line!.cost_usd as number).toBeCloseTo(expectedCost, 12);

    // A second collect reads the same results but records nothing again.
    const again = await h.batches.collect(result.id, requests);
    expect(again.accounted).toBe(false);
    expect(again.outcomes.map((o) => o.status)).toEqual(result.outcomes.map((o) => o.status));
    expect((await h.usage.totals('u-chat', 'day')).requests).toBe(5);
  });

  it('runs a batch of Responses requests: store false, output text and usage per custom_id', async () => {
    const requests: Array<BatchRequest<'responses'>> = [
      { customId: 'r-a', body: { input: 'alpha', instructions: 'Be brief.', max_output_tokens: 40 } },
      { customId: 'r-b', body: { input: 'beta' } },
      { customId: 'r-c', body: { model: 'big', input: [{ role: 'user', content: 'gamma' }] } },
    ];
    const result = await h.batches.run('responses', requests, { user: 'u-resp', pollIntervalMs: 10 });
    const input = fileLines(fake, fake.requestsTo('/v1/batches')[0]!.body.input_file_id);
    expect(input.map((l) => [l.url, l.body.store, l.body.max_output_tokens, l.body.model])).toEqual([
      ['/v1/responses', false, 40, MINI],
      ['/v1/responses', false, 200, MINI], // the default output cap
      ['/v1/responses', false, 200, BIG],
    ]);
    expect(result.endpoint).toBe('responses');
    expect(result.counts).toEqual({ succeeded: 3, failed: 0, missing: 0 });
    const texts = result.outcomes.map((o) => (o.status === 'succeeded' ? o.text : o.status));
    expect(texts).toEqual(['Echo: alpha', 'Echo: beta', 'Echo: gamma']);
    for (const o of result.outcomes) {
      if (o.status !== 'succeeded') continue;
      expect(o.response.object).toBe('response');
      expect(o.usage.prompt_tokens).toBe(o.response.usage!.input_tokens);
      expect(o.costUsd).toBe(h.pricing.cost(o.model, o.usage, 'batch'));
      expect(o.costUsd!).toBeCloseTo(h.pricing.cost(o.model, o.usage)! / 2, 12);
    }
    const totals = await h.usage.totals('u-resp', 'day');
    expect(totals.requests).toBe(3);
    expect(totals.cost_usd).toBeCloseTo(result.costUsd!, 9);
  });

  it('refuses a bad batch before uploading anything', async () => {
    await expect(h.batches.submit('chat.completions', [])).rejects.toMatchObject({ status: 400 });
    const dup = [...chatRequests(2), chatRequests(1)[0]!];
    await expect(h.batches.submit('chat.completions', dup)).rejects.toMatchObject({ status: 400 });
    const unpinned = chatRequests(1, 'gpt-4o'); // not a dated snapshot: the model policy says no
    await expect(h.batches.submit('chat.completions', unpinned)).rejects.toMatchObject({
      status: 400,
      response: { error: 'model_not_allowed' },
    });
    expect(fake.requestsTo('/v1/files')).toHaveLength(0);
    expect(fake.requestsTo('/v1/batches')).toHaveLength(0);
  });
});

describe('OpenAIBatchService: budgets, failures, cancel, deadline and abort (batches driven by the test)', () => {
  let fake: FakeOpenAIServer;
  let h: Handle;
  const LIMIT = 0.02;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ batchCompletesAfterPolls: Infinity });
    h = await startApp(options(fake.baseURL, { budgets: { user: { dailyUsd: LIMIT } } }));
  });
  afterAll(async () => {
    await h?.app.close();
    await fake?.close();
  });
  afterEach(() => fake.reset());

  const spent = async (user: string) => (await h.budgets.status(user))[0]!.spent_usd;
  /** Requests on the big model with the full output cap: each may cost up to ~$0.0025 at the batch price. */
  const bigRequests = (n: number) =>
    chatRequests(n, 'big').map((r) => ({ ...r, body: { ...r.body, max_tokens: 500 } }));
  const maxCostOf = (requests: Array<BatchRequest<'chat.completions'>>) =>
    requests.reduce(
      (s, r) => s + h.pricing.maxCost(BIG, countChatPromptTokens(r.body.messages as never), 500, 'batch')!,
      0,
    );

  it('reserves the max cost at the batch price before submitting and settles to the real cost after', async () => {
    const requests = bigRequests(4);
    const submitted = await h.batches.submit('chat.completions', requests, { user: 'u-budget' });
    expect(submitted.maxCostUsd!).toBeCloseTo(maxCostOf(requests), 12);
    // Half the standard max: the batch price.
    const standardMax = requests.reduce(
      (s, r) => s + h.pricing.maxCost(BIG, countChatPromptTokens(r.body.messages as never), 500)!,
      0,
    );
    expect(submitted.maxCostUsd!).toBeCloseTo(standardMax / 2, 12);
    expect(await spent('u-budget')).toBeCloseTo(micro(submitted.maxCostUsd!) / 1e6, 9);

    const waiting = h.batches.wait(submitted.id, { pollIntervalMs: 10 });
    await untilPolled(fake, submitted.id);
    await fake.batches.complete(submitted.id);
    const result = await h.batches.collect(await waiting);
    expect(result.counts.succeeded).toBe(4);
    expect(result.costUsd!).toBeLessThan(submitted.maxCostUsd!);
    await h.budgets.flush();
    expect(await spent('u-budget')).toBeCloseTo(micro(result.costUsd!) / 1e6, 9);
  });

  it('refuses a batch over the budget with 429 budget_exceeded and uploads nothing', async () => {
    const requests = bigRequests(20); // ~20 x $0.0025 > $0.02
    expect(maxCostOf(requests)).toBeGreaterThan(LIMIT);
    await expect(h.batches.submit('chat.completions', requests, { user: 'u-over' })).rejects.toMatchObject({
      status: 429,
      response: { error: 'budget_exceeded' },
    });
    expect(fake.requestsTo('/v1/files')).toHaveLength(0);
    expect(fake.requestsTo('/v1/batches')).toHaveLength(0);
    expect(await spent('u-over')).toBe(0);
  });

  it('releases the hold when the batch fails: every request missing, nothing recorded', async () => {
    const requests = bigRequests(3);
    const submitted = await h.batches.submit('chat.completions', requests, { user: 'u-fail' });
    expect(await spent('u-fail')).toBeGreaterThan(0);
    const waiting = h.batches.wait(submitted.id, { pollIntervalMs: 10 });
    await untilPolled(fake, submitted.id);
    fake.batches.fail(submitted.id);
    const result = await h.batches.collect(await waiting);
    expect(result.status).toBe('failed');
    expect(result.batch.errors?.data?.[0]?.code).toBe('batch_failed');
    expect(result.outcomes.map((o) => o.status)).toEqual(['missing', 'missing', 'missing']);
    expect(result.costUsd).toBe(0);
    expect(await spent('u-fail')).toBe(0);
    expect((await h.usage.totals('u-fail', 'day')).requests).toBe(0);
  });

  it('an expired batch reports each request as failed with batch_expired, and releases the hold', async () => {
    const submitted = await h.batches.submit('chat.completions', bigRequests(2), { user: 'u-exp' });
    fake.batches.expire(submitted.id);
    const result = await h.batches.collect(submitted.id);
    expect(result.status).toBe('expired');
    expect(result.outcomes).toEqual([
      { customId: 'q0', status: 'failed', error: { code: 'batch_expired', message: expect.any(String) } },
      { customId: 'q1', status: 'failed', error: { code: 'batch_expired', message: expect.any(String) } },
    ]);
    expect(await spent('u-exp')).toBe(0);
  });

  it('cancel: the batch goes cancelling, then cancelled; collect releases the hold', async () => {
    const submitted = await h.batches.submit('chat.completions', bigRequests(2), { user: 'u-cancel' });
    await expect(h.batches.collect(submitted.id)).rejects.toBeInstanceOf(BatchNotFinishedError);
    const cancelling = await h.batches.cancel(submitted.id);
    expect(cancelling.status).toBe('cancelling');
    expect(fake.requestsTo(`/v1/batches/${submitted.id}/cancel`)).toHaveLength(1);
    const done = await h.batches.wait(submitted.id, { pollIntervalMs: 10 });
    expect(done.status).toBe('cancelled');
    expect((await h.batches.retrieve(submitted.id)).status).toBe('cancelled');
    const result = await h.batches.collect(done);
    expect(result.counts).toEqual({ succeeded: 0, failed: 0, missing: 2 });
    expect(await spent('u-cancel')).toBe(0);
  });

  it('stops waiting at the deadline (504) and on abort (499); the batch keeps running and can be collected later', async () => {
    const requests = bigRequests(2);
    const submitted = await h.batches.submit('chat.completions', requests, { user: 'u-wait' });
    const started = performance.now();
    await expect(
      h.batches.wait(submitted.id, { deadlineMs: 250, pollIntervalMs: 20, maxPollIntervalMs: 40 }),
    ).rejects.toMatchObject({ status: 504, response: { error: 'upstream_timeout' } });
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(polls(fake, submitted.id).length).toBeGreaterThanOrEqual(4);

    const abort = new AbortController();
    const waiting = h.batches.wait(submitted.id, { signal: abort.signal, pollIntervalMs: 20 });
    const before = polls(fake, submitted.id).length;
    await untilPolled(fake, submitted.id, before + 1);
    abort.abort();
    await expect(waiting).rejects.toMatchObject({ status: 499 });
    const after = polls(fake, submitted.id).length;
    await new Promise((r) => setTimeout(r, 80));
    expect(polls(fake, submitted.id).length).toBe(after); // no more polls once aborted

    // Still held while it runs; collected later (here from the ids alone), settled then.
    expect(await spent('u-wait')).toBeCloseTo(micro(submitted.maxCostUsd!) / 1e6, 9);
    await fake.batches.complete(submitted.id);
    const result = await h.batches.collect(submitted.id, ['q0', 'q1', 'q-unknown']);
    expect(result.outcomes.map((o) => o.status)).toEqual(['succeeded', 'succeeded', 'missing']);
    await h.budgets.flush();
    expect(await spent('u-wait')).toBeCloseTo(micro(result.costUsd!) / 1e6, 9);
  });
});

describe('OpenAIBatchService: collect in another process', () => {
  let fake: FakeOpenAIServer;
  let a: Handle;
  let b: Handle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start({ batchCompletesAfterPolls: 1 });
    a = await startApp(options(fake.baseURL));
    b = await startApp(options(fake.baseURL));
  });
  afterAll(async () => {
    await a?.app.close();
    await b?.app.close();
    await fake?.close();
  });

  it('matches the results by custom_id from the batch id and the request ids, recording usage for the given user', async () => {
    const requests = chatRequests(3);
    const { id } = await a.batches.submit('chat.completions', requests, { user: 'u-a' });
    const batch = await b.batches.wait(id, { pollIntervalMs: 10 });
    const result = await b.batches.collect(batch, requests, { user: 'u-a', route: 'nightly' });
    expect(result.outcomes.map((o) => (o.status === 'succeeded' ? o.text : o.status))).toEqual([
      'Echo: question number 0',
      'Echo: question number 1',
      'Echo: question number 2',
    ]);
    const totals = await b.usage.totals('u-a', 'day');
    expect(totals.requests).toBe(3);
    expect(totals.by_route.nightly?.requests).toBe(3);
    expect(totals.cost_usd).toBeCloseTo(result.costUsd!, 9);
  });
});

describe("the README's Batch API snippet", () => {
  it('runs against the fake', async () => {
    const { NightlySummaries } = await import('./snippets/nightly-summaries.worker.js');
    const fake = await FakeOpenAIServer.start();
    const moduleRef = await Test.createTestingModule({
      imports: [OpenAIModule.forRoot(options(fake.baseURL))],
      providers: [NightlySummaries],
    })
      .setLogger(new CapturingLogger())
      .compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    try {
      const out = await app.get(NightlySummaries).run(
        'u-doc',
        new Map([
          ['d1', 'one'],
          ['d2', 'two'],
        ]),
      );
      expect(out).toEqual(
        new Map([
          ['d1', 'Echo: Summarize:\none'],
          ['d2', 'Echo: Summarize:\ntwo'],
        ]),
      );
      expect(
        (await app.get(UsageService).totals('u-doc', 'day')).by_route['worker:nightly-summaries']?.requests,
      ).toBe(2);
    } finally {
      await app.close();
      await fake.close();
    }
  });
});
