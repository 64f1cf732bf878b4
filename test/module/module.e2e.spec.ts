import 'reflect-metadata';
import { Injectable, Module, type INestApplication } from '@nestjs/common';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { Test } from '@nestjs/testing';
import OpenAI from 'openai';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  InjectOpenAI,
  OPENAI_RESOLVED_OPTIONS,
  OpenAIModule,
  OpenAIService,
  type OpenAIModuleOptions,
  type ResolvedOpenAIOptions,
} from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { CapturingLogger } from '../support/capturing-logger.js';
import { TEST_API_KEY } from '../support/sample-app.js';

/** What `useClass` / `useExisting` must implement (the library exports no named type for it). */
interface OpenAIOptionsFactory {
  createOpenAIOptions(): OpenAIModuleOptions | Promise<OpenAIModuleOptions>;
}

const ask = { messages: [{ role: 'user' as const, content: 'hi' }] };

describe('OpenAIModule registration', () => {
  let fake: FakeOpenAIServer;
  const apps: INestApplication[] = [];
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterEach(async () => {
    while (apps.length) await apps.pop()!.close();
    fake.reset();
  });
  afterAll(async () => {
    await fake.close();
  });

  const base = (): OpenAIModuleOptions => ({
    environment: 'test',
    apiKey: TEST_API_KEY,
    baseURL: fake.baseURL,
  });

  async function boot(metadata: Parameters<typeof Test.createTestingModule>[0]): Promise<INestApplication> {
    const ref = await Test.createTestingModule(metadata).setLogger(new CapturingLogger()).compile();
    const app = ref.createNestApplication({ logger: false });
    await app.init();
    apps.push(app);
    return app;
  }

  /** Makes one chat call through the app's service and returns what the fake server received. */
  async function roundTrip(app: INestApplication) {
    const r = await app.get(OpenAIService).chat(ask);
    expect(r.content).toBe('Echo: hi');
    const seen = fake.requestsTo('/v1/chat/completions');
    expect(seen).toHaveLength(1);
    return seen[0];
  }

  it('forRoot(options)', async () => {
    const app = await boot({ imports: [OpenAIModule.forRoot({ ...base(), retry: { maxRetries: 4 } })] });
    expect(app.get<ResolvedOpenAIOptions>(OPENAI_RESOLVED_OPTIONS).retry.maxRetries).toBe(4);
    const req = await roundTrip(app);
    expect(req.headers.authorization).toBe(`Bearer ${TEST_API_KEY}`);
  });

  it('forRootAsync with useFactory, imports and inject (ConfigModule / ConfigService)', async () => {
    const app = await boot({
      imports: [
        OpenAIModule.forRootAsync({
          imports: [
            ConfigModule.forRoot({
              ignoreEnvFile: true,
              load: [
                () => ({
                  OPENAI_API_KEY: 'sk-from-config-service-0123456789',
                  OPENAI_BASE_URL: fake.baseURL,
                  OPENAI_MAX_RETRIES: 3,
                }),
              ],
            }),
          ],
          inject: [ConfigService],
          useFactory: (config: ConfigService) => ({
            environment: 'test',
            apiKey: config.getOrThrow<string>('OPENAI_API_KEY'),
            baseURL: config.getOrThrow<string>('OPENAI_BASE_URL'),
            retry: { maxRetries: config.getOrThrow<number>('OPENAI_MAX_RETRIES') },
          }),
        }),
      ],
    });
    expect(app.get<ResolvedOpenAIOptions>(OPENAI_RESOLVED_OPTIONS).retry.maxRetries).toBe(3);
    const req = await roundTrip(app);
    expect(req.headers.authorization).toBe('Bearer sk-from-config-service-0123456789');
  });

  it('forRootAsync with an async useFactory', async () => {
    const app = await boot({
      imports: [
        OpenAIModule.forRootAsync({
          useFactory: async () => {
            await new Promise((r) => setTimeout(r, 5));
            return { ...base(), apiKey: 'sk-async-factory-key-0123456789' };
          },
        }),
      ],
    });
    expect((await roundTrip(app)).headers.authorization).toBe('Bearer sk-async-factory-key-0123456789');
  });

  it('forRootAsync with useClass', async () => {
    const url = fake.baseURL;
    @Injectable()
    class OptionsFromClass implements OpenAIOptionsFactory {
      createOpenAIOptions(): OpenAIModuleOptions {
        return { environment: 'test', apiKey: 'sk-use-class-key-0123456789abcdef', baseURL: url };
      }
    }
    const app = await boot({ imports: [OpenAIModule.forRootAsync({ useClass: OptionsFromClass })] });
    expect((await roundTrip(app)).headers.authorization).toBe('Bearer sk-use-class-key-0123456789abcdef');
  });

  it('forRootAsync with useExisting (a factory provided by an imported module)', async () => {
    const url = fake.baseURL;
    @Injectable()
    class SharedOptions implements OpenAIOptionsFactory {
      created = 0;
      createOpenAIOptions(): OpenAIModuleOptions {
        this.created++;
        return {
          environment: 'test',
          apiKey: 'sk-use-existing-key-0123456789ab',
          baseURL: url,
          models: { embedding: 'text-embedding-3-large' },
        };
      }
    }
    @Module({ providers: [SharedOptions], exports: [SharedOptions] })
    class SharedOptionsModule {}
    const app = await boot({
      imports: [OpenAIModule.forRootAsync({ imports: [SharedOptionsModule], useExisting: SharedOptions })],
    });
    expect(app.get(SharedOptions, { strict: false }).created).toBe(1);
    expect(app.get<ResolvedOpenAIOptions>(OPENAI_RESOLVED_OPTIONS).models.embedding).toBe(
      'text-embedding-3-large',
    );
    expect((await roundTrip(app)).headers.authorization).toBe('Bearer sk-use-existing-key-0123456789ab');
  });

  it('isGlobal: a provider in another module gets OpenAIService and the client without importing the module', async () => {
    @Injectable()
    class Consumer {
      constructor(
        readonly openai: OpenAIService,
        @InjectOpenAI() readonly client: OpenAI,
      ) {}
    }
    @Module({ providers: [Consumer], exports: [Consumer] })
    class FeatureModule {}
    const app = await boot({ imports: [OpenAIModule.forRoot({ ...base(), isGlobal: true }), FeatureModule] });
    const consumer = app.get(Consumer, { strict: false });
    expect(consumer.openai).toBe(app.get(OpenAIService));
    expect(consumer.client).toBe(consumer.openai.client);
    const r = await consumer.openai.chat(ask);
    expect(r.content).toBe('Echo: hi');
  });

  it('without isGlobal, a module that does not import OpenAIModule cannot resolve OpenAIService', async () => {
    @Injectable()
    class Consumer {
      constructor(readonly openai: OpenAIService) {}
    }
    @Module({ providers: [Consumer] })
    class FeatureModule {}
    await expect(
      Test.createTestingModule({ imports: [OpenAIModule.forRoot(base()), FeatureModule] })
        .setLogger(new CapturingLogger())
        .compile(),
    ).rejects.toThrow(/OpenAIService/);
  });

  it('@InjectOpenAI() gives the configured client: base URL, SDK retries off, organization and project headers', async () => {
    @Injectable()
    class RawUser {
      constructor(@InjectOpenAI() readonly client: OpenAI) {}
    }
    const app = await boot({
      imports: [
        OpenAIModule.forRoot({
          ...base(),
          organization: 'org-fixture123',
          project: 'proj_fixture456',
          isGlobal: true,
        }),
      ],
      providers: [RawUser],
    });
    const { client } = app.get(RawUser);
    expect(client).toBeInstanceOf(OpenAI);
    expect(client.baseURL).toBe(fake.baseURL);
    expect(client.maxRetries).toBe(0);

    // The raw client used directly: it reaches the fake server with the org/project headers, and does not
    // retry on its own (the service is the only retry owner).
    fake.fault({ path: '/v1/models', status: 500 });
    await expect(client.models.list()).rejects.toMatchObject({ status: 500 });
    expect(fake.requestsTo('/v1/models')).toHaveLength(1);
    fake.reset();
    await client.chat.completions.create({ model: 'gpt-4o-mini-2024-07-18', messages: ask.messages });
    const [req] = fake.requestsTo('/v1/chat/completions');
    expect(req.headers['openai-organization']).toBe('org-fixture123');
    expect(req.headers['openai-project']).toBe('proj_fixture456');
    expect(req.headers.authorization).toBe(`Bearer ${TEST_API_KEY}`);

    // The service's calls carry the same headers.
    fake.reset();
    await app.get(OpenAIService).chat(ask);
    expect(fake.requestsTo('/v1/chat/completions')[0].headers['openai-organization']).toBe('org-fixture123');
  });

  it('defaultHeaders reach the upstream', async () => {
    const app = await boot({
      imports: [OpenAIModule.forRoot({ ...base(), defaultHeaders: { 'x-team': 'search' } })],
    });
    expect((await roundTrip(app)).headers['x-team']).toBe('search');
  });
});
