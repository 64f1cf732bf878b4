import { HttpException } from '@nestjs/common';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UsageService, type OpenAICallHook, type SettledCall, type UpstreamCall } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import {
  PLATFORMS,
  TEST_API_KEY,
  fixtureOptions,
  startFixtureApp,
  type FixtureHandle,
} from '../support/fixture-app.js';

/** A user's own hook: records what it sees, refuses calls for the model `gpt-4o-2024-08-06`. */
class AuditHook implements OpenAICallHook {
  readonly seen: Array<{ call: UpstreamCall; settled?: SettledCall; released?: boolean }> = [];
  reserve(call: UpstreamCall) {
    if (call.model === 'gpt-4o-2024-08-06') throw new HttpException({ error: 'audit_refused' }, 403);
    const entry: { call: UpstreamCall; settled?: SettledCall; released?: boolean } = { call };
    this.seen.push(entry);
    return {
      settle: (s: SettledCall) => void (entry.settled = s),
      release: () => void (entry.released = true),
    };
  }
}

describe.each(PLATFORMS)('forRoot({ hooks }) on %s', (platform) => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  const audit = new AuditHook();
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      platform,
      fixtureOptions(fake.baseURL, TEST_API_KEY, {
        hooks: [audit],
        limits: { tokens: [{ name: 'minute', limit: 300, ttl: 60_000 }] },
        maxTokens: { cap: 100 },
      }),
    );
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });
  beforeEach(() => {
    fake.reset();
    audit.seen.length = 0;
  });

  it('runs the user hook beside the built-in ones: it sees the call and its settlement; usage is still recorded', async () => {
    const r = await h.openai.chat({ messages: [{ role: 'user', content: 'hi' }] }, { user: 'hook-user' });
    expect(audit.seen).toHaveLength(1);
    expect(audit.seen[0].call).toMatchObject({ user: 'hook-user', endpoint: 'chat.completions' });
    expect(audit.seen[0].settled?.usage.total_tokens).toBe(r.usage.total_tokens);
    await h.openai.flush();
    expect((await h.app.get(UsageService).totals('hook-user')).requests).toBe(1);
  });

  it('the built-in token limit still refuses before the user hook is settled', async () => {
    const calls = [1, 2, 3].map(() =>
      h.openai.chat({ messages: [{ role: 'user', content: 'x' }], max_tokens: 100 }, { user: 'hook-tokens' }),
    );
    const outcomes = await Promise.allSettled(calls);
    // 300 tokens a minute, each call reserves ~108: two run at once, the third is refused (429).
    const refused = outcomes.filter((o) => o.status === 'rejected');
    expect(refused).toHaveLength(1);
    expect((refused[0] as PromiseRejectedResult).reason.getStatus()).toBe(429);
    // The refused call's hold in the user hook, if it took one, was released.
    expect(audit.seen.filter((e) => e.released)).toHaveLength(audit.seen.length - 2);
  });

  it('a refusal by the user hook releases the built-in holds and reaches the client', async () => {
    const res = await request(h.server)
      .post('/chat')
      .send({ model: 'gpt-4o-2024-08-06', messages: [{ role: 'user', content: 'hi' }] });
    expect(res.status).toBe(403);
    expect(res.body.error).toBe('audit_refused');
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(0);
  });

  it('a hook without reserve() fails at boot', async () => {
    await expect(
      startFixtureApp(platform, fixtureOptions(fake.baseURL, TEST_API_KEY, { hooks: [{} as never] })),
    ).rejects.toThrow(/hooks\[0\].*reserve/s);
  });
});
