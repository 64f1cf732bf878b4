import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CallAbortedException, OpenAIUpstreamTimeoutException } from '../../lib/index.js';
import { fixtureOptions, startFixtureApp, TEST_API_KEY, type FixtureHandle } from '../support/fixture-app.js';
import { waitFor } from '../support/redis.js';

type Mode = 'ok' | 'headers-late' | 'body-late';

const COMPLETION = JSON.stringify({
  id: 'chatcmpl-1',
  object: 'chat.completion',
  created: 1,
  model: 'gpt-4o-mini',
  choices: [
    { index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop', logprobs: null },
  ],
  usage: { prompt_tokens: 8, completion_tokens: 1, total_tokens: 9 },
});

/** An upstream that answers each request by the next mode in `plan` (then `fallback`). */
class SlowUpstream {
  plan: Mode[] = [];
  fallback: Mode = 'ok';
  requests = 0;
  closed = 0;
  private server = http.createServer((req, res) => {
    this.requests++;
    res.on('close', () => this.closed++);
    req.resume();
    req.on('end', () => {
      const mode = this.plan.shift() ?? this.fallback;
      if (mode === 'headers-late') return;
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': String(Buffer.byteLength(COMPLETION)),
        'x-request-id': 'req_slow',
      });
      if (mode === 'body-late') {
        res.write(COMPLETION.slice(0, 10));
        return;
      }
      res.end(COMPLETION);
    });
  });
  async start(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1`;
  }
  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

describe('non-streamed calls: headers or body late (SDK timeout, no controller of ours)', () => {
  const up = new SlowUpstream();
  let h: FixtureHandle;
  beforeAll(async () => {
    const baseURL = await up.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(baseURL, TEST_API_KEY, {
        models: { default: 'gpt-4o-mini', fallbacks: [] },
        retry: { maxRetries: 1 },
        timeouts: { attemptMs: 300, deadlineMs: 5_000 },
      }),
    );
  });
  afterAll(async () => {
    await h.close();
    await up.close();
  });
  beforeEach(() => {
    up.plan = [];
    up.fallback = 'ok';
    up.requests = 0;
    up.closed = 0;
  });
  const chat = (opts: Parameters<FixtureHandle['openai']['chat']>[1] = {}) =>
    h.openai.chat({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 }, opts);

  for (const mode of ['headers-late', 'body-late'] as const) {
    it(`${mode} on every attempt: 504 at the attempt timeout after the retry, sockets closed`, async () => {
      up.fallback = mode;
      const t0 = Date.now();
      const err = await chat().catch((e: unknown) => e);
      const took = Date.now() - t0;
      expect(err).toBeInstanceOf(OpenAIUpstreamTimeoutException);
      expect(up.requests).toBe(2);
      expect(took).toBeGreaterThanOrEqual(550);
      expect(took).toBeLessThan(2_000);
      await waitFor('upstream sockets closed', () => up.closed === 2, 2_000);
    });

    it(`${mode} once, then an answer: 200 after a retry`, async () => {
      up.plan = [mode];
      const r = await chat();
      expect(r.content).toBe('hello');
      expect(r.attempts).toBe(2);
    });

    it(`${mode}: the deadline wins over a longer attempt timeout`, async () => {
      up.fallback = mode;
      const t0 = Date.now();
      const err = await chat({ attemptTimeoutMs: 3_000, deadlineMs: 400 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAIUpstreamTimeoutException);
      expect(Date.now() - t0).toBeLessThan(1_500);
      expect(up.requests).toBe(1);
    });

    it(`${mode}: the caller's abort ends the call (499) and the upstream request`, async () => {
      up.fallback = mode;
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 100);
      const t0 = Date.now();
      const err = await chat({ signal: ac.signal, attemptTimeoutMs: 3_000 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CallAbortedException);
      expect(Date.now() - t0).toBeLessThan(1_000);
      expect(up.requests).toBe(1);
      await waitFor('upstream socket closed', () => up.closed === 1, 2_000);
    });
  }
});
