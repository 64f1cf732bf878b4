import { Reflector } from '@nestjs/core';
import { describe, expect, it, vi } from 'vitest';
import { resolveOpenAIOptions } from '../options/resolve-options.js';
import { RequestContextStore } from '../request-context/request-context.js';
import type { OpenAIModuleOptions } from '../options/openai-module-options.interface.js';
import { Moderate } from './moderate.decorator.js';
import { ContentFlaggedException } from './moderation.exceptions.js';
import { ModerationPipe } from './moderation.pipe.js';
import type { ModerationService } from './moderation.service.js';

class Plain {
  handler() {}
}

@Moderate({ roles: ['system'], categories: ['violence'] })
class Annotated {
  inherits() {}
  @Moderate({ roles: ['user', 'assistant'], thresholds: { harassment: 0.9 }, onError: 'fail-open' })
  own() {}
  @Moderate({ input: false })
  skip() {}
  @Moderate({ fields: ['prompt'] })
  fields() {}
}

function setup(options: OpenAIModuleOptions = {}, flagged: string[] = []) {
  const check = vi.fn(async (_texts: readonly string[]) => ({
    flagged: flagged.length > 0,
    categories: flagged,
  }));
  const resolved = resolveOpenAIOptions({
    environment: 'development',
    apiKey: 'sk-test-0000000000000000',
    logging: { config: false },
    ...options,
  });
  const pipe = new ModerationPipe({ check } as unknown as ModerationService, new Reflector(), resolved);
  return { pipe, check };
}

const body = {
  messages: [
    { role: 'system', content: 's' },
    { role: 'user', content: 'u' },
    { role: 'assistant', content: 'a' },
  ],
  prompt: 'p',
};
const meta = { type: 'body' as const };

function inRoute<T>(controller: Function, handler: Function | undefined, fn: () => Promise<T>): Promise<T> {
  return RequestContextStore.run({ requestId: 'r1', startedAt: 0, controller, handler }, fn);
}

describe('ModerationPipe', () => {
  it('moderates user messages by default, in one check, and returns the body unchanged', async () => {
    const { pipe, check } = setup();
    await expect(inRoute(Plain, Plain.prototype.handler, () => pipe.transform(body, meta))).resolves.toBe(
      body,
    );
    expect(check).toHaveBeenCalledTimes(1);
    expect(check).toHaveBeenCalledWith(['u'], 'input', {
      categories: undefined,
      thresholds: undefined,
      onError: undefined,
    });
  });

  it('works outside a request context (module defaults)', async () => {
    const { pipe, check } = setup({ moderation: { roles: ['system', 'user'] } });
    await pipe.transform(body, meta);
    expect(check.mock.calls[0][0]).toEqual(['s', 'u']);
  });

  it('a flagged input throws 422 input_flagged with the categories', async () => {
    const { pipe } = setup({}, ['harassment', 'violence']);
    const err = await pipe.transform(body, meta).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ContentFlaggedException);
    expect((err as ContentFlaggedException).getStatus()).toBe(422);
    expect((err as ContentFlaggedException).body).toMatchObject({
      error: 'input_flagged',
      categories: ['harassment', 'violence'],
    });
  });

  it("route settings: the handler's @Moderate wins over the controller's", async () => {
    const { pipe, check } = setup();
    await inRoute(Annotated, Annotated.prototype.own, () => pipe.transform(body, meta));
    expect(check).toHaveBeenLastCalledWith(['u', 'a'], 'input', {
      categories: undefined,
      thresholds: { harassment: 0.9 },
      onError: 'fail-open',
    });
    await inRoute(Annotated, Annotated.prototype.inherits, () => pipe.transform(body, meta));
    expect(check).toHaveBeenLastCalledWith(['s'], 'input', {
      categories: ['violence'],
      thresholds: undefined,
      onError: undefined,
    });
  });

  it('input: false skips moderation; fields moderates named fields', async () => {
    const { pipe, check } = setup();
    await inRoute(Annotated, Annotated.prototype.skip, () => pipe.transform(body, meta));
    expect(check).not.toHaveBeenCalled();
    await inRoute(Annotated, Annotated.prototype.fields, () => pipe.transform(body, meta));
    expect(check).toHaveBeenLastCalledWith(['p'], 'input', expect.anything());
  });

  it('is a no-op for other arguments than the body, and when moderation is disabled', async () => {
    const { pipe, check } = setup();
    await pipe.transform('FLAG_ME', { type: 'query' });
    await pipe.transform('FLAG_ME', { type: 'param' });
    const off = setup({ moderation: { enabled: false } });
    await off.pipe.transform(body, meta);
    expect(check).not.toHaveBeenCalled();
    expect(off.check).not.toHaveBeenCalled();
  });
});
