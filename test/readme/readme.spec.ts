import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { readFileSync } from 'node:fs';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';

// Vitest runs from the repository root.
const root = `${process.cwd()}/`;
const readme = readFileSync(`${root}README.md`, 'utf8');

/** `<!-- snippet: path -->` followed by a fenced block: the block must be that file, verbatim. */
const snippets = [...readme.matchAll(/<!-- snippet: (\S+) -->\n+```(?:ts|typescript)\n([\s\S]*?)```/g)].map(
  (m) => ({ path: m[1], code: m[2] }),
);

describe('README snippets', () => {
  it('has snippets', () => {
    expect(snippets.length).toBeGreaterThanOrEqual(6);
  });
  it.each(snippets.map((s) => [s.path, s.code]))('%s is the compiled file, verbatim', (path, code) => {
    expect(code.trim()).toBe(readFileSync(`${root}${path}`, 'utf8').trim());
  });
});

describe('README quick start', () => {
  let fake: FakeOpenAIServer;
  let app: INestApplication;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    process.env.OPENAI_API_KEY = 'sk-readme-quick-start-key-0000';
    process.env.OPENAI_BASE_URL = fake.baseURL;
    const { AppModule } = await import('./snippets/app.module.js');
    const moduleRef = await Test.createTestingModule({ imports: [AppModule] }).compile();
    app = moduleRef.createNestApplication({ logger: false });
    await app.init();
  });
  afterAll(async () => {
    await app?.close();
    await fake?.close();
    delete process.env.OPENAI_API_KEY;
    delete process.env.OPENAI_BASE_URL;
  });

  it('serves POST /chat through the alias, with usage, cost and the upstream request ID', async () => {
    const res = await request(app.getHttpServer())
      .post('/chat')
      .send({ messages: [{ role: 'user', content: 'Say hello' }] });
    expect(res.status).toBe(201);
    const upstream = fake.requestsTo('/v1/chat/completions');
    expect(upstream).toHaveLength(1);
    expect(upstream[0].body.model).toBe('gpt-4o-mini-2024-07-18');
    expect(res.body.content).toBe('Echo: Say hello');
    expect(res.body.openai_request_id).toBe(upstream[0].requestId);
    expect(res.body.cost_usd).toBeGreaterThan(0);
    expect(res.headers['x-ratelimit-limit']).toBe('20');
  });
});
