import { Logger, type LoggerService } from '@nestjs/common';
import { describe, expect, it, vi } from 'vitest';
import { ApiKeySource, keyRefreshFetch } from './api-key-source.js';

function deferred<T>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

describe('ApiKeySource', () => {
  it('caches the key for cacheMs, then asks again (once for concurrent callers)', async () => {
    let now = 1_000;
    const provider = vi.fn(async () => `k${provider.mock.calls.length}`);
    const source = new ApiKeySource(provider, 100, () => now);
    expect(await Promise.all([source.get(), source.get()])).toEqual(['k1', 'k1']);
    now += 99;
    expect(await source.get()).toBe('k1');
    now += 1;
    expect(await Promise.all([source.get(), source.get(), source.get()])).toEqual(['k2', 'k2', 'k2']);
    expect(provider).toHaveBeenCalledTimes(2);
  });

  it('refresh is single-flight, and a key already replaced is not asked for again', async () => {
    const d = deferred<string>();
    const provider = vi.fn().mockResolvedValueOnce('old').mockReturnValueOnce(d.promise);
    const source = new ApiKeySource(provider, 60_000);
    expect(await source.get()).toBe('old');
    const during = [source.refresh('old'), source.refresh('old'), source.refresh('old')];
    d.resolve('new');
    expect(await Promise.all(during)).toEqual(['new', 'new', 'new']);
    // A 401 of a request sent with the old key, arriving after the refresh: no new provider call.
    expect(await source.refresh('old')).toBe('new');
    expect(provider).toHaveBeenCalledTimes(2);
  });

  it('a failing provider is logged as such (error name only: its message may quote a secret)', async () => {
    const lines: unknown[] = [];
    const capture: LoggerService = {
      log: () => {},
      warn: () => {},
      error: (m: unknown) => void lines.push(m),
    };
    Logger.overrideLogger(capture);
    try {
      const provider = vi
        .fn()
        .mockRejectedValue(new TypeError('vault down: token=sk-proj-SECRETSECRETSECRET'));
      await expect(new ApiKeySource(provider, 60_000).get()).rejects.toThrow('vault down');
      expect(lines).toEqual([{ msg: 'the API key provider failed', error: 'TypeError' }]);
      expect(JSON.stringify(lines)).not.toContain('SECRET');
    } finally {
      Logger.overrideLogger(false);
    }
  });

  it('a failing provider is asked again next time (the failure is not cached)', async () => {
    const provider = vi.fn().mockRejectedValueOnce(new Error('vault down')).mockResolvedValue('k');
    const source = new ApiKeySource(provider, 60_000);
    await expect(source.get()).rejects.toThrow('vault down');
    expect(await source.get()).toBe('k');
  });
});

describe('keyRefreshFetch', () => {
  const ok = () => new Response('{}', { status: 200 });
  const unauthorized = () => new Response('{"error":{}}', { status: 401 });

  it('on a 401 resends once with the refreshed key; no resend when the key did not change', async () => {
    const seen: string[] = [];
    const base = vi.fn(async (_: unknown, init?: RequestInit) => {
      const auth = new Headers(init?.headers).get('authorization')!;
      seen.push(auth);
      return auth === 'Bearer new' ? ok() : unauthorized();
    }) as unknown as typeof fetch;
    const provider = vi.fn().mockResolvedValueOnce('old').mockResolvedValueOnce('new');
    const source = new ApiKeySource(provider, 60_000);
    await source.get();
    const f = keyRefreshFetch(source, base);
    const res = await f('http://x/v1/chat/completions', {
      method: 'POST',
      body: '{}',
      headers: { authorization: 'Bearer old' },
    });
    expect(res.status).toBe(200);
    expect(seen).toEqual(['Bearer old', 'Bearer new']);

    // Sent with a key replaced since: resent with the current one, the provider not asked.
    const late = await f('http://x', { headers: { authorization: 'Bearer other' } });
    expect(late.status).toBe(200);
    expect(seen.slice(2)).toEqual(['Bearer other', 'Bearer new']);
    expect(provider).toHaveBeenCalledTimes(2);
  });

  it('no resend when the provider returns the refused key again, or for a stream body', async () => {
    const base = vi.fn(async () => unauthorized()) as unknown as typeof fetch;
    const provider = vi.fn(async () => 'same');
    const source = new ApiKeySource(provider, 60_000);
    await source.get();
    const f = keyRefreshFetch(source, base);
    expect((await f('http://x', { headers: { authorization: 'Bearer same' } })).status).toBe(401);
    expect(provider).toHaveBeenCalledTimes(2);
    expect(base).toHaveBeenCalledTimes(1);
    const stream = new ReadableStream({ start: (c) => c.close() });
    expect((await f('http://x', { body: stream, headers: { authorization: 'Bearer x' } })).status).toBe(401);
    expect(base).toHaveBeenCalledTimes(2);
  });
});
