import { describe, expect, it, vi } from 'vitest';
import { resolveOpenAIOptions } from '../../options/resolve-options.js';
import { ChatRequestSchema } from './chat-request.schema.js';
import * as tokenCounter from '../../tokens/token-counter.js';
import { countChatPromptTokens } from '../../tokens/token-counter.js';
import { ChatRequestPipe } from './chat-request.pipe.js';
import { InputTooLargeException, enforceInputLimits } from '../../call/input-limits.js';
import { InvalidBodyException, parseBody } from '../parse-body.js';

const LIMITS = { maxMessages: 3, maxChars: 100, maxPromptTokens: 40 };
const user = (content: unknown) => ({ role: 'user', content });

function invalid(value: unknown): InvalidBodyException {
  try {
    parseBody(ChatRequestSchema, value);
  } catch (e) {
    if (e instanceof InvalidBodyException) return e;
    throw new Error(`threw something else than InvalidBodyException: ${String(e)}`, { cause: e });
  }
  throw new Error(`accepted: ${JSON.stringify(value)}`);
}

describe('parseBody with ChatRequestSchema', () => {
  it('accepts the contract body: roles, string or text-part content, optional sampling fields', () => {
    const body = {
      messages: [
        user('hi'),
        { role: 'system', content: 's' },
        { role: 'developer', content: 'd' },
        { role: 'assistant', content: [{ type: 'text', text: 'a' }], name: 'bot' },
      ],
      model: 'gpt-4o-mini-2024-07-18',
      max_tokens: 10,
      temperature: 0,
      top_p: 1,
      stop: ['x'],
      seed: 3,
    };
    expect(parseBody(ChatRequestSchema, body)).toEqual(body);
  });

  it.each([undefined, null, 'str', 42, true, [], [{ messages: [] }]])(
    'refuses a body that is not a JSON object: %j',
    (v) => {
      const e = invalid(v);
      expect(e.getStatus()).toBe(400);
      expect(e.body).toMatchObject({
        error: 'invalid_body',
        message: 'Body must be a JSON object',
        issues: [],
      });
    },
  );

  it.each([
    ['logprobs', { logprobs: true }],
    ['logit_bias', { logit_bias: { '1': 5 } }],
    ['n', { n: 2 }],
    ['tools', { tools: [] }],
    ['stream', { stream: true }],
    ['user', { user: 'x' }],
    ['__proto__', JSON.parse('{"__proto__": {"x": 1}}')],
    ['constructor', { constructor: { prototype: {} } }],
  ])('refuses the unknown parameter %s, naming it', (key, extra) => {
    const value = Object.assign(JSON.parse(JSON.stringify({ messages: [user('hi')] })), extra);
    if (key === '__proto__') Object.defineProperty(value, '__proto__', { value: { x: 1 }, enumerable: true });
    const e = invalid(value);
    expect(e.message).toContain(key);
    expect(e.body.issues).toEqual(expect.arrayContaining([expect.objectContaining({ path: '(body)' })]));
  });

  it.each([
    ['empty messages', { messages: [] }],
    ['unknown role', { messages: [{ role: 'tool', content: 'x' }] }],
    ['image part', { messages: [user([{ type: 'image_url', image_url: { url: 'u' } }])] }],
    ['empty part list', { messages: [user([])] }],
    ['number content', { messages: [user(1)] }],
    ['null content', { messages: [user(null)] }],
    ['extra message key', { messages: [{ ...user('x'), tool_calls: [] }] }],
    ['max_tokens as string', { messages: [user('x')], max_tokens: '5' }],
    ['max_tokens 0', { messages: [user('x')], max_tokens: 0 }],
    ['max_tokens fractional', { messages: [user('x')], max_tokens: 1.5 }],
    ['temperature above 2', { messages: [user('x')], temperature: 2.01 }],
    ['5 stop sequences', { messages: [user('x')], stop: ['a', 'b', 'c', 'd', 'e'] }],
    ['empty model', { messages: [user('x')], model: '' }],
    ['name too long', { messages: [{ ...user('x'), name: 'n'.repeat(65) }] }],
  ])('refuses %s with a path', (_n, v) => {
    const e = invalid(v);
    expect((e.body.issues as unknown[]).length).toBeGreaterThan(0);
  });

  it('never echoes values, and clips what zod quotes (unknown keys can be most of the body)', () => {
    const secret = 'sk-proj-verysecretvalue1234567890';
    const e1 = invalid({ messages: [user(42)], model: 7, temperature: secret });
    expect(JSON.stringify(e1.body)).not.toContain(secret);
    const hugeKey = 'k'.repeat(100_000);
    const e2 = invalid({ messages: [user('x')], [hugeKey]: 1 });
    expect(JSON.stringify(e2.body).length).toBeLessThan(1_000);
    for (const i of e2.body.issues as Array<{ path: string; message: string }>)
      expect(i.message.length).toBeLessThanOrEqual(123);
  });

  it('reports at most 10 issues', () => {
    const e = invalid({ messages: Array.from({ length: 30 }, () => ({ role: 'nope', content: 1 })) });
    expect(e.body.issues).toHaveLength(10);
  });
});

describe('enforceInputLimits', () => {
  it('returns the prompt tokens, as the upstream counts them', () => {
    const messages = [
      user('hello there'),
      {
        role: 'assistant',
        content: [
          { type: 'text', text: 'a' },
          { type: 'text', text: 'b' },
        ],
      },
    ];
    expect(enforceInputLimits({ messages }, LIMITS)).toBe(countChatPromptTokens(messages as never));
  });

  it('maxMessages, maxChars (all roles, parts joined with a newline) and maxPromptTokens, each exact at the boundary', () => {
    expect(() => enforceInputLimits({ messages: [user('a'), user('b'), user('c')] }, LIMITS)).not.toThrow();
    expect(() =>
      enforceInputLimits({ messages: [user('a'), user('b'), user('c'), user('d')] }, LIMITS),
    ).toThrow(/4 messages, over the limit of 3 \(maxMessages\)/);
    // 49 + (25 + 1 + 25) = 100 characters
    const hundred = [
      { role: 'system', content: 'x'.repeat(49) },
      user([
        { type: 'text', text: 'y'.repeat(25) },
        { type: 'text', text: 'z'.repeat(25) },
      ]),
    ];
    expect(() =>
      enforceInputLimits({ messages: hundred }, { ...LIMITS, maxPromptTokens: 10_000 }),
    ).not.toThrow();
    const e = (() => {
      try {
        enforceInputLimits(
          { messages: [...hundred.slice(0, 1), user('!'.repeat(52))] },
          { ...LIMITS, maxPromptTokens: 10_000 },
        );
      } catch (err) {
        return err as InputTooLargeException;
      }
      return undefined;
    })();
    expect(e).toBeInstanceOf(InputTooLargeException);
    expect(e!.getStatus()).toBe(413);
    expect(e!.body).toMatchObject({ error: 'input_too_large', limit: 'maxChars', max: 100 });
    expect(e!.message).toBe('The request has 101 characters, over the limit of 100 (maxChars)');
  });

  it('maxPromptTokens: exactly the cap passes, one more is refused naming the limit', () => {
    let words = 1;
    let messages = [user('w')];
    while (countChatPromptTokens(messages as never) < LIMITS.maxPromptTokens)
      messages = [user('w '.repeat(++words).trim())];
    const n = countChatPromptTokens(messages as never);
    const limits = { ...LIMITS, maxPromptTokens: n, maxChars: 10_000 };
    expect(enforceInputLimits({ messages }, limits)).toBe(n);
    expect(() => enforceInputLimits({ messages }, { ...limits, maxPromptTokens: n - 1 })).toThrow(
      expect.objectContaining({
        response: expect.objectContaining({ limit: 'maxPromptTokens', max: n - 1 }),
      }),
    );
  });

  it('checks the cheap caps before tokenizing', () => {
    const spy = vi.spyOn(tokenCounter, 'countChatPromptTokens');
    expect(() => enforceInputLimits({ messages: [user('q'.repeat(1_000))] }, LIMITS)).toThrow(/maxChars/);
    expect(() =>
      enforceInputLimits({ messages: Array.from({ length: 5 }, () => user('x')) }, LIMITS),
    ).toThrow(/maxMessages/);
    expect(spy).not.toHaveBeenCalled();
    // The spy does see the tokenizer when the cheap caps pass (so the assertion above means something).
    enforceInputLimits({ messages: [user('fresh array')] }, LIMITS);
    expect(spy).toHaveBeenCalledTimes(1);
    spy.mockRestore();
  });
});

describe('ChatRequestPipe', () => {
  it("validates, then enforces the module's input caps", () => {
    const options = resolveOpenAIOptions({
      environment: 'development',
      apiKey: 'sk-test-0000000000000000',
      input: { maxMessages: 1 },
    });
    const pipe = new ChatRequestPipe(options);
    expect(pipe.transform({ messages: [user('x')] })).toEqual({ messages: [user('x')] });
    expect(() => pipe.transform({ messages: [user('x'), user('y')] })).toThrow(InputTooLargeException);
    expect(() => pipe.transform({ messages: [user('x')], n: 2 })).toThrow(InvalidBodyException);
  });

  it('without the module (no options), only validates', () => {
    const pipe = new ChatRequestPipe();
    expect(pipe.transform({ messages: Array.from({ length: 100 }, () => user('x')) }).messages).toHaveLength(
      100,
    );
  });
});
