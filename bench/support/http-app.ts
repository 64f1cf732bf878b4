// Child process of the bench: the Nest apps autocannon measures, on Express, with the fake upstream
// (zero delay) in this same process. Talks to the parent over IPC:
//   child -> parent: { ready: { lib: port, bare?: port } }, { cpu: { user, system } }, { reset: true }
//   parent -> child: { cmd: 'cpu' } | { cmd: 'reset' } | { cmd: 'stop' }
//                    | { cmd: 'prof-start' } | { cmd: 'prof-stop', file } (a V8 CPU profile of the window
//                    between them, written to `file`; child -> parent: { prof: true })
// argv[2]: 'memory' | 'redis' (REDIS_URL in the environment for 'redis') | 'gateway' (the upstream in
// its own process at BENCH_UPSTREAM, the Portkey gateway at BENCH_GATEWAY, memory store; adds `/gateway`).
import 'reflect-metadata';
import {
  Body,
  Controller,
  HttpCode,
  Module,
  Post,
  UseGuards,
  type DynamicModule,
  type INestApplication,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import OpenAI from 'openai';
import {
  ChatRequestPipe,
  InjectOpenAI,
  OpenAIModule,
  OpenAIService,
  OpenAIThrottlerGuard,
  type ChatRequestBody,
} from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { MODEL, USER, benchOptions } from './options.js';

type Messages = OpenAI.Chat.ChatCompletionMessageParam[];

@Controller()
class BenchController {
  constructor(
    @InjectOpenAI() private readonly client: OpenAI,
    private readonly openai: OpenAIService,
  ) {}

  /** The module's configured SDK client, called directly: the baseline. */
  @Post('raw')
  @HttpCode(200)
  async raw(@Body() body: { messages: Messages }) {
    const c = await this.client.chat.completions.create({ model: MODEL, messages: body.messages });
    return { content: c.choices[0]?.message?.content ?? null, usage: c.usage };
  }

  /** The service pipeline (token limit, budgets and usage of the module's options apply). */
  @Post('service')
  @HttpCode(200)
  async service(@Body() body: { messages: Messages }) {
    const r = await this.openai.chat(body);
    return { content: r.content, usage: r.usage };
  }

  /** The guard (request limit) and the body pipe (shape, input caps, prompt tokens) in front of the service. */
  @Post('guarded')
  @HttpCode(200)
  @UseGuards(OpenAIThrottlerGuard)
  async guarded(@Body(ChatRequestPipe) body: ChatRequestBody) {
    const r = await this.openai.chat(body);
    return { content: r.content, usage: r.usage };
  }
}

/** The same call through the Portkey gateway, by a plain SDK client (retries off) like `/raw`'s. */
@Controller()
class GatewayController {
  private readonly client = new OpenAI({
    apiKey: 'sk-bench-0000000000000000000000000000',
    baseURL: `${process.env.BENCH_GATEWAY}/v1`,
    maxRetries: 0,
    defaultHeaders: { 'x-portkey-provider': 'openai', 'x-portkey-custom-host': process.env.BENCH_UPSTREAM },
  });

  @Post('gateway')
  @HttpCode(200)
  async gateway(@Body() body: { messages: Messages }) {
    const c = await this.client.chat.completions.create({ model: MODEL, messages: body.messages });
    return { content: c.choices[0]?.message?.content ?? null, usage: c.usage };
  }
}

@Module({})
class BenchAppModule {
  static register(baseURL: string, redisUrl?: string, gateway = false): DynamicModule {
    return {
      module: BenchAppModule,
      imports: [OpenAIModule.forRoot({ ...benchOptions('limited', baseURL, redisUrl), isGlobal: true })],
      controllers: gateway ? [BenchController, GatewayController] : [BenchController],
    };
  }
}

/** A Nest app without the library: its own plain SDK client (retries off), no module middleware or interceptor. */
@Controller()
class BareController {
  private readonly client: OpenAI;
  constructor() {
    this.client = new OpenAI({
      apiKey: 'sk-bench-0000000000000000000000000000',
      baseURL: process.env.BENCH_UPSTREAM,
      maxRetries: 0,
    });
  }

  @Post('raw')
  @HttpCode(200)
  async raw(@Body() body: { messages: Messages }) {
    const c = await this.client.chat.completions.create({ model: MODEL, messages: body.messages });
    return { content: c.choices[0]?.message?.content ?? null, usage: c.usage };
  }
}

@Module({ controllers: [BareController] })
class BareAppModule {}

/** Sets the identity the guard tracks (as an auth guard or passport would), on every route alike. */
function identify(app: INestApplication): void {
  app.use((req: { user?: unknown }, _res: unknown, next: () => void) => {
    req.user = { id: USER };
    next();
  });
}

async function listen(app: INestApplication): Promise<number> {
  identify(app);
  await app.listen(0, '127.0.0.1');
  return (app.getHttpServer().address() as { port: number }).port;
}

async function main(): Promise<void> {
  const mode = process.argv[2];
  if (mode !== 'memory' && mode !== 'redis' && mode !== 'gateway')
    throw new Error(`usage: http-app.js memory|redis|gateway (got ${mode})`);
  // 'gateway': the upstream runs in a process of its own (BENCH_UPSTREAM), as the gateway does.
  const fake = mode === 'gateway' ? undefined : await FakeOpenAIServer.start();
  if (fake) {
    process.env.BENCH_UPSTREAM = fake.baseURL;
    // The fake records every request: drop them often so the heap does not grow during a run.
    setInterval(() => fake.reset(), 200).unref();
  }
  const upstream = process.env.BENCH_UPSTREAM!;
  const apps: INestApplication[] = [];
  const lib = await NestFactory.create(
    BenchAppModule.register(
      upstream,
      mode === 'redis' ? process.env.REDIS_URL : undefined,
      mode === 'gateway',
    ),
    {
      logger: false,
      abortOnError: false,
    },
  );
  apps.push(lib);
  const ports: { lib: number; bare?: number } = { lib: await listen(lib) };
  if (mode === 'memory') {
    const bare = await NestFactory.create(BareAppModule, { logger: false, abortOnError: false });
    apps.push(bare);
    ports.bare = await listen(bare);
  }
  const send = (m: unknown) => process.send!(m);
  let session: Session | undefined;
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) =>
      session!.post(method, params, (err, res) => (err ? reject(err) : resolve(res))),
    );
  process.on('message', (m: { cmd?: string; file?: string }) => {
    if (m.cmd === 'prof-start') {
      void (async () => {
        session = new Session();
        session.connect();
        await post('Profiler.enable');
        await post('Profiler.setSamplingInterval', { interval: 100 });
        await post('Profiler.start');
        send({ prof: true });
      })();
    } else if (m.cmd === 'prof-stop') {
      void (async () => {
        const { profile } = (await post('Profiler.stop')) as { profile: unknown };
        writeFileSync(m.file!, JSON.stringify(profile));
        session!.disconnect();
        send({ prof: true });
      })();
    } else if (m.cmd === 'cpu') send({ cpu: process.cpuUsage() });
    else if (m.cmd === 'reset') {
      fake?.reset();
      send({ reset: true });
    } else if (m.cmd === 'stop') {
      void (async () => {
        for (const app of apps) await app.close();
        await fake?.close();
        process.exit(0);
      })();
    }
  });
  process.on('disconnect', () => process.exit(0));
  send({ ready: ports });
}

main().catch((err: unknown) => {
  console.error('bench app failed:', err);
  process.exit(1);
});
