import { Test } from '@nestjs/testing';
import { OpenAIModule, OpenAIService } from 'nestjs-openai-production';
import { FakeOpenAIServer } from 'nestjs-openai-production/testing';
import { afterAll, beforeAll, expect, it } from 'vitest';

let fake: FakeOpenAIServer;
let openai: OpenAIService;

beforeAll(async () => {
  fake = await FakeOpenAIServer.start();
  const moduleRef = await Test.createTestingModule({
    imports: [
      OpenAIModule.forRoot({
        apiKey: 'sk-test-0000000000000000',
        baseURL: fake.baseURL,
        environment: 'test',
        retry: { initialDelayMs: 1 },
      }),
    ],
  }).compile();
  openai = moduleRef.get(OpenAIService);
});

afterAll(() => fake.close());

it('retries a 503 and reports the upstream request ID', async () => {
  fake.fault({ path: '/v1/chat/completions', status: 503, times: 1 });
  const r = await openai.chat({ messages: [{ role: 'user', content: 'Hello' }] });
  expect(r.content).toBe('Echo: Hello');
  expect(r.attempts).toBe(2);
  expect(r.openaiRequestId).toBe(fake.requestsTo('/v1/chat/completions')[1].requestId);
});
