import { describe, expect, it } from 'vitest';
import { extractTexts } from './extract-texts.js';

describe('extractTexts', () => {
  const body = {
    messages: [
      { role: 'system', content: 'sys' },
      { role: 'user', content: 'u1' },
      { role: 'assistant', content: 'a1' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'p1' },
          { type: 'image_url', image_url: { url: 'x' } },
          { type: 'text', text: 'p2' },
        ],
      },
      { role: 'developer', content: 'dev' },
      { role: 'user', content: '' },
      { role: 'user', content: null },
    ],
  };

  it('takes the content of messages with the selected roles, in order, text parts joined with a newline', () => {
    expect(extractTexts(body, { roles: ['user'] })).toEqual(['u1', 'p1\np2']);
    expect(extractTexts(body, { roles: ['system', 'user', 'developer'] })).toEqual([
      'sys',
      'u1',
      'p1\np2',
      'dev',
    ]);
    expect(extractTexts(body, { roles: ['assistant'] })).toEqual(['a1']);
  });

  it('tolerates bodies that are not chat requests', () => {
    for (const b of [
      undefined,
      null,
      42,
      'str',
      [],
      {},
      { messages: 'x' },
      { messages: [null, 1, 'x', { content: 'no role' }] },
    ]) {
      expect(extractTexts(b, { roles: ['user'] })).toEqual([]);
    }
  });

  it('fields: dotted paths of strings or string arrays, instead of messages', () => {
    const b = {
      prompt: 'p',
      nested: { notes: ['n1', 2, 'n2'], deep: { x: 'dx' } },
      messages: [{ role: 'user', content: 'ignored' }],
    };
    expect(
      extractTexts(b, {
        roles: ['user'],
        fields: ['prompt', 'nested.notes', 'nested.deep.x', 'missing', 'nested.missing.x'],
      }),
    ).toEqual(['p', 'n1', 'n2', 'dx']);
  });

  it('an empty fields list falls back to messages', () => {
    expect(
      extractTexts({ messages: [{ role: 'user', content: 'm' }] }, { roles: ['user'], fields: [] }),
    ).toEqual(['m']);
  });

  it('fields only follow own properties (no prototype keys)', () => {
    const b = JSON.parse('{"__proto__": {"prompt": "from proto"}}');
    expect(extractTexts(b, { roles: ['user'], fields: ['prompt', 'constructor.name', 'toString'] })).toEqual(
      [],
    );
  });
});
