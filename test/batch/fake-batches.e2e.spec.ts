import OpenAI, { toFile } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_BATCH_PRICES,
  DEFAULT_BATCH_PRICES_SOURCE,
  DEFAULT_PRICES,
  PricingService,
} from '../../lib/index.js';
import { resolveOpenAIOptions } from '../../lib/options/resolve-options.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';

const jsonl = (lines: object[]) =>
  toFile(Buffer.from(lines.map((l) => JSON.stringify(l)).join('\n')), 'in.jsonl', {
    type: 'application/jsonl',
  });
const chatLine = (id: string, body: object = {}) => ({
  custom_id: id,
  method: 'POST',
  url: '/v1/chat/completions',
  body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: `hi ${id}` }], ...body },
});
const lines = async (client: OpenAI, id: string | null | undefined) =>
  id
    ? (await (await client.files.content(id)).text())
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, any>)
    : [];

describe('the fake serves the Files and Batch APIs to the real SDK', () => {
  let fake: FakeOpenAIServer;
  let client: OpenAI;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    client = new OpenAI({ apiKey: 'k', baseURL: fake.baseURL, maxRetries: 0 });
  });
  afterAll(() => fake?.close());

  it('uploads a multipart file and serves its content back', async () => {
    const text = '{"a":1}\n{"b":"é ✓"}\n';
    const file = await client.files.create({
      file: await toFile(Buffer.from(text), 'x.jsonl'),
      purpose: 'batch',
    });
    expect(file).toMatchObject({
      object: 'file',
      filename: 'x.jsonl',
      purpose: 'batch',
      bytes: Buffer.byteLength(text),
    });
    expect(await (await client.files.content(file.id)).text()).toBe(text);
    await expect(client.files.content('file-nope')).rejects.toMatchObject({ status: 404 });
  });

  it('runs each line through the chat route: route errors and streams go to the error file', async () => {
    const file = await client.files.create({
      file: await jsonl([
        chatLine('ok'),
        chatLine('bad', { max_tokens: 0 }),
        chatLine('stream', { stream: true }),
        chatLine('ok2'),
      ]),
      purpose: 'batch',
    });
    const created = await client.batches.create({
      input_file_id: file.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
    expect(created.status).toBe('validating');
    const done = await client.batches.retrieve(created.id);
    expect(done.status).toBe('completed');
    expect(done.request_counts).toEqual({ total: 4, completed: 2, failed: 2 });
    const out = await lines(client, done.output_file_id);
    expect(new Set(out.map((l) => l.custom_id))).toEqual(new Set(['ok', 'ok2']));
    expect(out[0]!.response.status_code).toBe(200);
    expect(out[0]!.response.body.object).toBe('chat.completion');
    const errors = await lines(client, done.error_file_id);
    expect(Object.fromEntries(errors.map((l) => [l.custom_id, l.response.status_code]))).toEqual({
      bad: 400,
      stream: 400,
    });
    expect(done.usage?.input_tokens).toBe(
      out.reduce((s, l) => s + (l.response.body.usage.prompt_tokens as number), 0),
    );
    await expect(client.batches.cancel(created.id)).rejects.toMatchObject({ status: 409 });
  });

  it('fails a batch whose input does not validate (repeated custom_id, wrong url)', async () => {
    const file = await client.files.create({
      file: await jsonl([chatLine('a'), chatLine('a'), { ...chatLine('b'), url: '/v1/responses' }]),
      purpose: 'batch',
    });
    const created = await client.batches.create({
      input_file_id: file.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
    const failed = await client.batches.retrieve(created.id);
    expect(failed.status).toBe('failed');
    expect(failed.errors?.data?.map((e) => [e.code, e.line])).toEqual([
      ['duplicate_custom_id', 2],
      ['mismatched_endpoint', 3],
    ]);
    expect(failed.output_file_id ?? null).toBeNull();
  });

  it('refuses a batch for an unknown file or an endpoint it does not run', async () => {
    await expect(
      client.batches.create({
        input_file_id: 'file-x',
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      }),
    ).rejects.toMatchObject({ status: 404 });
    const file = await client.files.create({ file: await jsonl([chatLine('a')]), purpose: 'batch' });
    await expect(
      client.batches.create({
        input_file_id: file.id,
        endpoint: '/v1/images/edits',
        completion_window: '24h',
      }),
    ).rejects.toMatchObject({ status: 400 });
    await expect(client.batches.retrieve('batch_nope')).rejects.toMatchObject({ status: 404 });
  });

  it.each(['failed', 'expired'] as const)('ends batches as %s with batchOutcome', async (outcome) => {
    const f = await FakeOpenAIServer.start({ batchOutcome: outcome, batchCompletesAfterPolls: 2 });
    try {
      const c = new OpenAI({ apiKey: 'k', baseURL: f.baseURL, maxRetries: 0 });
      const file = await c.files.create({
        file: await jsonl([chatLine('a'), chatLine('b')]),
        purpose: 'batch',
      });
      const b = await c.batches.create({
        input_file_id: file.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      expect((await c.batches.retrieve(b.id)).status).toBe('in_progress');
      const done = await c.batches.retrieve(b.id);
      expect(done.status).toBe(outcome);
      const errors = await lines(c, done.error_file_id);
      expect(errors.map((l) => l.error?.code)).toEqual(
        outcome === 'expired' ? ['batch_expired', 'batch_expired'] : [],
      );
    } finally {
      await f.close();
    }
  });
});

describe('batch prices', () => {
  it('are 50% of the standard prices, dated and sourced', () => {
    expect(DEFAULT_BATCH_PRICES_SOURCE.asOf).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(DEFAULT_BATCH_PRICES_SOURCE.url).toMatch(/^https:\/\//);
    expect(Object.isFrozen(DEFAULT_BATCH_PRICES)).toBe(true);
    for (const [model, p] of Object.entries(DEFAULT_PRICES)) {
      const b = DEFAULT_BATCH_PRICES[model]!;
      expect(b.input).toBeCloseTo(p.input / 2, 12);
      expect(b.output).toBeCloseTo(p.output / 2, 12);
      expect(b.cachedInput ?? null).toBe(p.cachedInput === undefined ? null : p.cachedInput / 2);
    }
  });

  it('price a snapshot by its base name, and an override brings its own batch price or none', () => {
    const pricing = new PricingService(
      resolveOpenAIOptions({
        apiKey: 'k',
        environment: 'development',
        pricing: {
          models: {
            'gpt-4o': { input: 4, output: 8 }, // no batch price: batch usage of it is unpriced
            'acme-1': { input: 2, output: 2, batch: { input: 0.5, output: 0.5 } },
          },
        },
      }),
    );
    const usage = { prompt_tokens: 1_000_000, cached_tokens: 0, completion_tokens: 1_000_000 };
    expect(pricing.cost('gpt-4o-mini-2024-07-18', usage, 'batch')).toBeCloseTo(0.375, 12);
    expect(pricing.cost('gpt-4o-mini-2024-07-18', usage)).toBeCloseTo(0.75, 12);
    expect(pricing.cost('gpt-4o-2024-08-06', usage, 'batch')).toBeNull();
    expect(pricing.cost('acme-1', usage, 'batch')).toBe(1);
    expect(pricing.maxCost('acme-1', 1_000_000, 1_000_000, 'batch')).toBe(1);
  });
});
