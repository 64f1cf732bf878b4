// Where the pipeline's time goes: wraps the steps of OpenAIService.chat() (and what they call) with
// performance.now() timers and runs sequential in-process calls against the zero-delay fake upstream.
// Not part of `npm run bench` (which compiles it too):
//   node bench/dist/bench/stages.bench.js [bare|memory|redis] [calls] [flags]
//   --fake-child: the fake upstream runs in a child process (default: in this process).
//   --guard: each call goes through OpenAIThrottlerGuard.canActivate and ChatRequestPipe.transform first (as /guarded).
//   --autopipeline: (redis) what-if, the store's ioredis client with enableAutoPipelining.
// For a CPU profile of the pipeline alone (the fake upstream elsewhere, no timers):
//   node --cpu-prof --cpu-prof-dir=bench/dist/prof bench/dist/bench/stages.bench.js memory 10000 --no-wrap --fake-child
//   node bench/dist/bench/support/cpuprofile-summary.js bench/dist/prof/<file>.cpuprofile
import 'reflect-metadata';
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { NestFactory } from '@nestjs/core';
import type OpenAI from 'openai';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import {
  ChatRequestPipe,
  OPENAI_CLIENT,
  OpenAIModule,
  OpenAIService,
  OpenAIThrottlerGuard,
} from '../lib/index.js';
import { FakeOpenAIServer } from '../lib/testing/index.js';
import { BODY, MODEL, USER, benchOptions } from './support/options.js';
import { BenchRedis } from './support/redis-server.js';
import { Samples, summarize, table, us } from './support/stats.js';

/** The fake upstream in a child process. */
class FakeChild {
  private constructor(
    private readonly child: ChildProcess,
    readonly baseURL: string,
  ) {}
  static async start(): Promise<FakeChild> {
    const child = fork(join(__dirname, 'support', 'fake-upstream.js'), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: [],
    });
    const baseURL = await new Promise<string>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`fake upstream exited with code ${code}`)));
      child.once('message', (m: { baseURL: string }) => resolve(m.baseURL));
    });
    child.removeAllListeners('exit');
    return new FakeChild(child, baseURL);
  }
  async close(): Promise<void> {
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.disconnect();
    await exited;
  }
}

const timings = new Map<string, Samples>();

function record(label: string, ms: number): void {
  let s = timings.get(label);
  if (!s) timings.set(label, (s = new Samples()));
  s.push(ms);
}

/** Replaces `target[name]` with a timed version (sync or promise-returning); inclusive time. */
function wrap(target: Record<string, any>, name: string, label: string): void {
  const original = target[name] as (...args: unknown[]) => unknown;
  if (typeof original !== 'function') throw new Error(`cannot wrap ${label}: not a function`);
  // Created now, so that the report lists the steps in the order they are wrapped.
  timings.set(label, new Samples());
  target[name] = function (this: unknown, ...args: unknown[]) {
    const t0 = performance.now();
    let out: unknown;
    try {
      out = original.apply(this, args);
    } catch (err) {
      record(label, performance.now() - t0);
      throw err;
    }
    if (
      out &&
      typeof (out as Promise<unknown>).then === 'function' &&
      !(out as { withResponse?: unknown }).withResponse
    ) {
      return (out as Promise<unknown>).finally(() => {
        record(label, performance.now() - t0);
      });
    }
    record(label, performance.now() - t0);
    return out;
  };
}

async function main(): Promise<void> {
  const mode = (process.argv[2] ?? 'memory') as 'bare' | 'memory' | 'redis';
  const calls = Number(process.argv[3] ?? 5_000);
  const noWrap = process.argv.includes('--no-wrap');
  const fakeChild = process.argv.includes('--fake-child');
  const upstream = fakeChild ? await FakeChild.start() : await FakeOpenAIServer.start();
  const redis = mode === 'redis' ? await BenchRedis.start() : undefined;
  const options = benchOptions(mode === 'bare' ? 'bare' : 'limited', upstream.baseURL, redis?.url);
  // What-if: ioredis auto-pipelining (commands issued in the same tick share one write).
  if (process.argv.includes('--autopipeline') && options.storage?.redis)
    options.storage.redis.redisOptions = { enableAutoPipelining: true };
  const app = await NestFactory.createApplicationContext(OpenAIModule.forRoot(options), {
    logger: false,
    abortOnError: false,
  });
  try {
    const service = app.get(OpenAIService);
    const client = app.get<OpenAI>(OPENAI_CLIENT);
    const withGuard = process.argv.includes('--guard');
    const guard = app.get(OpenAIThrottlerGuard);
    const pipe = app.get(ChatRequestPipe);
    class BenchRoute {
      handler(this: void): void {}
    }
    const chat = withGuard
      ? async () => {
          // What Nest does for /guarded: the guard on the request, then the pipe on the parsed body.
          const req = { user: { id: USER }, headers: {}, ip: '127.0.0.1' };
          const res = { headersSent: false, setHeader: () => undefined };
          await guard.canActivate(
            new ExecutionContextHost([req, res, () => undefined], BenchRoute, BenchRoute.prototype.handler),
          );
          return service.chat(pipe.transform(JSON.parse(BODY)), { user: USER });
        }
      : () => service.chat(JSON.parse(BODY), { user: USER });
    const raw = () => client.chat.completions.create({ model: MODEL, messages: JSON.parse(BODY).messages });
    for (let i = 0; i < 1_000; i++) {
      await chat();
      await raw();
    }
    if (!noWrap) {
      const lib = (p: string) => require(`../lib/${p}`) as Record<string, any>;
      const proto = (p: string, cls: string) => lib(p)[cls].prototype as Record<string, any>;
      const svc = proto('call/call-pipeline.js', 'CallPipeline');
      const executor = proto('call/call-executor.js', 'CallExecutor');
      if (withGuard) {
        wrap(
          proto('throttling/openai-throttler.guard.js', 'OpenAIThrottlerGuard'),
          'canActivate',
          'OpenAIThrottlerGuard.canActivate',
        );
        wrap(
          proto('throttling/rate-limit.service.js', 'RateLimitService'),
          'hitRequest',
          '  RateLimitService.hitRequest',
        );
        wrap(
          proto('endpoints/chat-completions/chat-request.pipe.js', 'ChatRequestPipe'),
          'transform',
          'ChatRequestPipe.transform (zod + input caps)',
        );
      }
      wrap(svc, 'prepareChat', 'prepareChat (all)');
      wrap(lib('call/input-limits.js'), 'enforceInputLimits', '  enforceInputLimits (caps + prompt tokens)');
      wrap(lib('tokens/prompt-token-cache.js'), 'promptTokensOf', '    promptTokensOf (tokenizer, o200k)');
      wrap(lib('identity/safety-identifier.js'), 'hashUserId', '  hashUserId (SHA-256 safety_identifier)');
      wrap(proto('models/model-policy.js', 'ModelPolicy'), 'resolve', '  ModelPolicy.resolve');
      wrap(proto('models/model-policy.js', 'ModelPolicy'), 'fallbacksFor', '  ModelPolicy.fallbacksFor');
      wrap(svc, 'reserve', 'reserve (all hooks)');
      wrap(proto('throttling/token-limit.hook.js', 'TokenLimitHook'), 'plan', '  TokenLimitHook.plan');
      wrap(proto('budget/budget.service.js', 'BudgetService'), 'plan', '  BudgetService.plan');
      wrap(proto('usage/usage.hook.js', 'UsageHook'), 'reserve', '  UsageHook.reserve');
      wrap(executor, 'execute', 'execute (attempt loop + upstream call)');
      // The SDK call inside execute (create → withResponse resolved), to separate the attempt loop's own cost.
      const completions = client.chat.completions as unknown as Record<string, any>;
      const create = completions.create.bind(completions) as (...args: unknown[]) => {
        withResponse: () => Promise<unknown>;
      };
      timings.set('  SDK call inside execute (create().withResponse())', new Samples());
      completions.create = (...args: unknown[]) => {
        const t0 = performance.now();
        const p = create(...args);
        const withResponse = p.withResponse.bind(p);
        p.withResponse = () =>
          withResponse().finally(() =>
            record('  SDK call inside execute (create().withResponse())', performance.now() - t0),
          );
        return p;
      };
      wrap(svc, 'meta', 'meta (latency, cost, metrics.succeeded)');
      wrap(
        proto('metrics/openai-metrics.service.js', 'OpenAIMetricsService'),
        'attempt',
        '  metrics.attempt',
      );
      wrap(
        proto('metrics/openai-metrics.service.js', 'OpenAIMetricsService'),
        'succeeded',
        '  metrics.succeeded',
      );
      wrap(proto('pricing/pricing.service.js', 'PricingService'), 'cost', '  PricingService.cost');
      wrap(svc, 'settle', 'settle (all reservations)');
      wrap(proto('usage/usage.service.js', 'UsageService'), 'record', '  UsageService.record (sync part)');
      wrap(svc, 'logCall', 'logCall');
      const store = mode === 'redis' ? 'storage/resilient.store.js' : 'storage/memory.store.js';
      const storeCls = mode === 'redis' ? 'ResilientStore' : 'MemoryStore';
      for (const m of ['consume', 'consumeMany', 'adjustMany', 'incrementFields'])
        wrap(proto(store, storeCls), m, `(inside the steps above) store.${m}, ${storeCls}`);
    }
    const chatMs = new Samples(calls);
    const rawMs = new Samples(calls);
    for (let i = 0; i < calls; i++) {
      let t0 = performance.now();
      await chat();
      chatMs.push(performance.now() - t0);
      t0 = performance.now();
      await raw();
      rawMs.push(performance.now() - t0);
    }
    const c = summarize(chatMs.values());
    const r = summarize(rawMs.values());
    console.log(
      `# Stages of ${withGuard ? 'guard + pipe + ' : ''}OpenAIService.chat() — ${mode === 'bare' ? 'no limits, budgets or usage' : `limits, budgets and usage on the ${mode} store`}, ${calls} calls (interleaved with raw SDK calls)\n`,
    );
    console.log(
      table(
        ['', 'p50 µs', 'p99 µs', 'mean µs'],
        [
          [withGuard ? 'guard + pipe + chat(), total' : 'chat(), total', us(c.p50), us(c.p99), us(c.mean)],
          ['raw SDK call', us(r.p50), us(r.p99), us(r.mean)],
          ['added', us(c.p50 - r.p50, true), us(c.p99 - r.p99, true), us(c.mean - r.mean, true)],
        ],
      ),
    );
    if (!noWrap) {
      console.log('\nInclusive time of each step (↳: called inside the step above it), per invocation:\n');
      const rows = [...timings.entries()]
        .filter(([, s]) => s.length > 0)
        .map(([label, s]) => {
          const x = summarize(s.values());
          return [
            label.replace(/^( +)/, (m) => '↳ '.repeat(m.length / 2)),
            (x.n / calls).toFixed(2),
            us(x.p50),
            us(x.p99),
            us(x.mean),
            us((x.mean * x.n) / calls),
          ];
        });
      console.log(table(['step', 'per chat', 'p50 µs', 'p99 µs', 'mean µs', 'µs per chat'], rows));
      console.log('\n(each timer adds ~0.1-0.3 µs; the total above includes them)');
    }
  } finally {
    await app.close();
    await upstream.close();
    await redis?.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
