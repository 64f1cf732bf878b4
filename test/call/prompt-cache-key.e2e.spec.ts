import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashUserId } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';

describe('identity.promptCacheKey', () => {
  let fake: FakeOpenAIServer;
  let on: FixtureHandle;
  let off: FixtureHandle;
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    on = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { identity: { promptCacheKey: true, salt: 's1' } }),
    );
    off = await startFixtureApp('express', fixtureOptions(fake.baseURL, TEST_API_KEY));
  });
  afterAll(async () => {
    await on?.close();
    await off?.close();
    await fake?.close();
  });

  it('sends the hashed user as prompt_cache_key on chat and responses when opted in; a request key wins', async () => {
    fake.reset();
    await on.openai.chat({ messages: [{ role: 'user', content: 'hi' }] }, { user: 'u1' });
    await on.openai.createResponse({ input: 'hi' }, { user: 'u1' });
    await on.openai.createResponse({ input: 'hi', prompt_cache_key: 'mine' }, { user: 'u1' });
    const keys = fake.requests.map((r) => r.body.prompt_cache_key);
    expect(keys).toEqual([hashUserId('u1', 's1'), hashUserId('u1', 's1'), 'mine']);
    expect(fake.requests.map((r) => r.body.safety_identifier)).toEqual(Array(3).fill(hashUserId('u1', 's1')));
  });

  it('is off by default, and never sent without a user', async () => {
    fake.reset();
    await off.openai.chat({ messages: [{ role: 'user', content: 'hi' }] }, { user: 'u1' });
    await on.openai.chat({ messages: [{ role: 'user', content: 'hi' }] });
    expect(fake.requests.map((r) => r.body.prompt_cache_key)).toEqual([undefined, undefined]);
  });
});
