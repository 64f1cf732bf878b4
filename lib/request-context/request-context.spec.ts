import { describe, expect, it } from 'vitest';
import { REQUEST_CONTEXT_KEY, RequestContextStore, acceptRequestId } from './request-context.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('acceptRequestId', () => {
  it('keeps a sane ID: letters, digits, dot, underscore, dash', () => {
    expect(acceptRequestId('req_ABC-123.x')).toBe('req_ABC-123.x');
    expect(acceptRequestId('a')).toBe('a');
  });

  it('keeps 128 characters, replaces 129', () => {
    const ok = 'a'.repeat(128);
    expect(acceptRequestId(ok)).toBe(ok);
    const tooLong = 'a'.repeat(129);
    const out = acceptRequestId(tooLong);
    expect(out).not.toBe(tooLong);
    expect(out).toMatch(UUID);
  });

  it.each(['has space', 'semi;colon', 'slash/x', 'new\nline', 'quote"', 'ünïcode', '<script>', 'tab\t', ''])(
    'replaces %j with a UUID',
    (bad) => {
      expect(acceptRequestId(bad)).toMatch(UUID);
    },
  );

  it('replaces non-strings (missing header, repeated header)', () => {
    expect(acceptRequestId(undefined)).toMatch(UUID);
    expect(acceptRequestId(['a', 'b'])).toMatch(UUID);
    expect(acceptRequestId(42)).toMatch(UUID);
  });

  it('gives a fresh UUID each time', () => {
    expect(acceptRequestId(undefined)).not.toBe(acceptRequestId(undefined));
  });
});

describe('RequestContextStore', () => {
  it('is undefined outside run(), and visible across awaits inside it', async () => {
    expect(RequestContextStore.get()).toBeUndefined();
    const ctx = { requestId: 'r1', startedAt: 0 };
    await RequestContextStore.run(ctx, async () => {
      await new Promise((r) => setTimeout(r, 1));
      expect(RequestContextStore.get()).toBe(ctx);
    });
    expect(RequestContextStore.get()).toBeUndefined();
  });

  it('keeps concurrent requests apart', async () => {
    const seen: string[] = [];
    await Promise.all(
      ['a', 'b', 'c'].map((id, i) =>
        RequestContextStore.run({ requestId: id, startedAt: 0 }, async () => {
          await new Promise((r) => setTimeout(r, 5 * (3 - i)));
          seen.push(`${id}=${RequestContextStore.get()?.requestId}`);
        }),
      ),
    );
    expect(seen.sort()).toEqual(['a=a', 'b=b', 'c=c']);
  });

  it('attach() stores the context on the request once, and fromRequest() finds it, also under Fastify raw', () => {
    const raw: Record<string | symbol, unknown> = {};
    const ctx = RequestContextStore.attach(raw, 'inbound-1');
    expect(ctx.requestId).toBe('inbound-1');
    expect(raw[REQUEST_CONTEXT_KEY]).toBe(ctx);
    expect(RequestContextStore.attach(raw, 'other')).toBe(ctx);
    expect(RequestContextStore.fromRequest({ raw })).toBe(ctx);
    expect(RequestContextStore.fromRequest({})).toBeUndefined();
    expect(RequestContextStore.fromRequest(undefined)).toBeUndefined();
  });

  it('attach() replaces an insane inbound ID', () => {
    expect(RequestContextStore.attach({}, 'bad id').requestId).toMatch(UUID);
  });
});
