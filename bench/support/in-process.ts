import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type OpenAI from 'openai';
import { BudgetService, OPENAI_CLIENT, OpenAIModule, OpenAIService, UsageService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { BODY, EXPECTED_CONTENT, MODEL, USER, benchOptions, type Pipeline } from './options.js';
import { Samples, summarize, type Summary } from './stats.js';

export interface InProcessSettings {
  /** Calls per variant before measuring. */
  warmup: number;
  /** Measured calls per variant. */
  calls: number;
  /** Consecutive calls of one variant in a round. */
  block: number;
}

export interface VariantResult {
  name: string;
  summary: Summary;
  /** CPU time of this process per call (ms), off-path work and the in-process fake upstream included. */
  cpuPerCallMs: number;
}

interface Variant {
  name: string;
  call: (body: { messages: OpenAI.Chat.ChatCompletionMessageParam[] }) => Promise<string | null>;
  /** Waits for the off-path writes (usage ledger, budget alert checks) of this variant. */
  drain: () => Promise<void>;
  samples: Samples;
  /** CPU time (µs) and calls measured. */
  cpuUs: number;
  cpuCalls: number;
}

async function context(
  pipeline: Pipeline,
  baseURL: string,
  redisUrl?: string,
): Promise<INestApplicationContext> {
  return NestFactory.createApplicationContext(
    OpenAIModule.forRoot(benchOptions(pipeline, baseURL, redisUrl)),
    {
      logger: false,
      abortOnError: false,
    },
  );
}

function drainOf(app: INestApplicationContext): () => Promise<void> {
  const usage = app.get(UsageService);
  const budgets = app.get(BudgetService);
  return async () => {
    await usage.flush();
    await budgets.flush();
  };
}

/**
 * Part A: sequential calls against a zero-delay fake upstream in this process, timed with
 * `performance.now()`: the raw SDK client, then `OpenAIService.chat()` bare, with limits in memory
 * and with limits on Redis. Variants run in blocks whose order rotates every round, so drift (CPU
 * frequency, GC, other tenants) spreads over all of them; each block starts after the previous
 * variant's off-path writes are drained.
 */
export async function runInProcess(redisUrl: string, settings: InProcessSettings): Promise<VariantResult[]> {
  const fake = await FakeOpenAIServer.start();
  const apps: INestApplicationContext[] = [];
  try {
    const bare = await context('bare', fake.baseURL);
    apps.push(bare);
    const memory = await context('limited', fake.baseURL);
    apps.push(memory);
    const redis = await context('limited', fake.baseURL, redisUrl);
    apps.push(redis);

    const client = bare.get<OpenAI>(OPENAI_CLIENT);
    const service = (app: INestApplicationContext) => {
      const s = app.get(OpenAIService);
      return async (body: { messages: OpenAI.Chat.ChatCompletionMessageParam[] }) =>
        (await s.chat(body, { user: USER })).content;
    };
    const none = async () => undefined;
    const variants: Variant[] = [
      {
        name: 'raw SDK `client.chat.completions.create`',
        call: async ({ messages }) => {
          const c = await client.chat.completions.create({ model: MODEL, messages });
          return c.choices[0]?.message?.content ?? null;
        },
        drain: none,
        samples: new Samples(settings.calls),
        cpuUs: 0,
        cpuCalls: 0,
      },
      {
        name: '`OpenAIService.chat()`, no limits',
        call: service(bare),
        drain: drainOf(bare),
        samples: new Samples(settings.calls),
        cpuUs: 0,
        cpuCalls: 0,
      },
      {
        name: '`chat()` + token limit + budgets + usage, memory',
        call: service(memory),
        drain: drainOf(memory),
        samples: new Samples(settings.calls),
        cpuUs: 0,
        cpuCalls: 0,
      },
      {
        name: '`chat()` + token limit + budgets + usage, Redis',
        call: service(redis),
        drain: drainOf(redis),
        samples: new Samples(settings.calls),
        cpuUs: 0,
        cpuCalls: 0,
      },
    ];

    for (const v of variants) {
      const content = await v.call(JSON.parse(BODY));
      if (content !== EXPECTED_CONTENT)
        throw new Error(`${v.name}: unexpected content ${JSON.stringify(content)}`);
    }
    const rounds = async (perVariant: number, record: boolean) => {
      const n = Math.ceil(perVariant / settings.block);
      for (let round = 0; round < n; round++) {
        for (let i = 0; i < variants.length; i++) {
          const v = variants[(i + round) % variants.length]!;
          const count = Math.min(settings.block, perVariant - round * settings.block);
          const cpu0 = process.cpuUsage();
          for (let k = 0; k < count; k++) {
            // The body is parsed outside the timing, fresh per call (as an HTTP body would be), so the
            // service's per-array prompt-token cache does not hide the tokenizer.
            const body = JSON.parse(BODY);
            const t0 = performance.now();
            await v.call(body);
            const dt = performance.now() - t0;
            if (record) v.samples.push(dt);
          }
          await v.drain();
          if (record) {
            const cpu = process.cpuUsage(cpu0);
            v.cpuUs += cpu.user + cpu.system;
            v.cpuCalls += count;
          }
          fake.reset();
        }
      }
    };
    await rounds(settings.warmup, false);
    await rounds(settings.calls, true);
    return variants.map((v) => ({
      name: v.name,
      summary: summarize(v.samples.values()),
      cpuPerCallMs: v.cpuUs / 1000 / v.cpuCalls,
    }));
  } finally {
    for (const app of apps.reverse()) await app.close();
    await fake.close();
  }
}
