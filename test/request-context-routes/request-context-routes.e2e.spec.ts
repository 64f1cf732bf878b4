import 'reflect-metadata';
import { Controller, Get, HttpCode, Post, RequestMethod, type DynamicModule } from '@nestjs/common';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { OpenAIModule, OpenAIService, RequestContextStore } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';

/** What the handler sees of the request context: `null` when none was opened for the request. */
const seen = () => {
  const ctx = RequestContextStore.get();
  return { request_id: ctx?.requestId ?? null, route: ctx?.route ?? null };
};

@Controller()
class ChatController {
  constructor(private readonly openai: OpenAIService) {}

  @Post('chat')
  @HttpCode(200)
  async chat() {
    const r = await this.openai.chat({ messages: [{ role: 'user', content: 'hi' }] });
    return { ...seen(), content: r.content };
  }

  @Get('chat/ping')
  ping() {
    return seen();
  }
}

@Controller()
class OpsController {
  constructor(private readonly openai: OpenAIService) {}

  @Get('health')
  health() {
    return seen();
  }

  @Get('metrics')
  metrics() {
    return seen();
  }

  @Get('status')
  status() {
    return seen();
  }

  /** An excluded route may still call OpenAI: the call runs without request context, as in a worker. */
  @Post('health/deep')
  @HttpCode(200)
  async deep() {
    const r = await this.openai.chat({ messages: [{ role: 'user', content: 'ping' }] });
    return { ...seen(), content: r.content };
  }
}

describe.each(PLATFORMS)('requestContext: { forRoutes, exclude } on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle | undefined;
  const start = (openai: DynamicModule) =>
    startFixtureApp(platform, {}, { openai, controllers: [ChatController, OpsController] }).then(
      (app) => (h = app),
    );
  const options = () => fixtureOptions(fake.baseURL, TEST_API_KEY);

  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
  });
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });
  afterAll(async () => {
    await fake?.close();
  });

  /** The route has the request context: an `x-request-id` echoed, the same ID inside the handler. */
  const expectIncluded = async (app: FixtureHandle, method: 'get' | 'post', path: string) => {
    const res = await request(app.server)[method](path).set('x-request-id', `rid-${platform}-in`);
    expect(res.status).toBe(200);
    expect(res.headers['x-request-id']).toBe(`rid-${platform}-in`);
    expect(res.body.request_id).toBe(`rid-${platform}-in`);
    expect(res.body.route).toMatch(new RegExp(`^${method.toUpperCase()} /`));
    return res;
  };
  /** The route has none: no `x-request-id` from the library, no context in the handler (the interceptor skipped it too). */
  const expectExcluded = async (app: FixtureHandle, method: 'get' | 'post', path: string) => {
    const res = await request(app.server)[method](path).set('x-request-id', `rid-${platform}-out`);
    expect(res.status).toBe(200);
    expect(res.headers['x-request-id']).toBeUndefined();
    expect(res.body).toMatchObject({ request_id: null, route: null });
    return res;
  };

  it('every route has it by default', async () => {
    const app = await start(OpenAIModule.forRoot(options()));
    await expectIncluded(app, 'get', '/health');
    await expectIncluded(app, 'post', '/chat');
    const res = await request(app.server).get('/status');
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.body.request_id).toBe(res.headers['x-request-id']);
  });

  it('exclude: paths and route infos are left out, the rest keeps it', async () => {
    const app = await start(
      OpenAIModule.forRoot({
        ...options(),
        requestContext: {
          exclude: [{ path: 'health', method: RequestMethod.GET }, 'metrics', 'health/deep'],
        },
      }),
    );
    await expectExcluded(app, 'get', '/health');
    await expectExcluded(app, 'get', '/metrics');
    await expectIncluded(app, 'get', '/status');
    await expectIncluded(app, 'get', '/chat/ping');
    const chat = await expectIncluded(app, 'post', '/chat');
    expect(chat.body.content).toBe('Echo: hi');
    const deep = await expectExcluded(app, 'post', '/health/deep');
    expect(deep.body.content).toBe('Echo: ping');
  });

  it('forRoutes: only the given controller has it', async () => {
    const app = await start(
      OpenAIModule.forRoot({ ...options(), requestContext: { forRoutes: [ChatController] } }),
    );
    await expectIncluded(app, 'post', '/chat');
    await expectIncluded(app, 'get', '/chat/ping');
    await expectExcluded(app, 'get', '/health');
    await expectExcluded(app, 'get', '/status');
  });

  it('forRoutes and exclude together, beside useFactory in forRootAsync', async () => {
    const app = await start(
      OpenAIModule.forRootAsync({
        useFactory: async () => options(),
        requestContext: {
          forRoutes: [{ path: 'chat', method: RequestMethod.POST }, 'chat/ping', 'status'],
          exclude: ['status'],
        },
      }),
    );
    await expectIncluded(app, 'post', '/chat');
    await expectIncluded(app, 'get', '/chat/ping');
    await expectExcluded(app, 'get', '/status');
    await expectExcluded(app, 'get', '/health');
  });
});
