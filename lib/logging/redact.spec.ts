import { describe, expect, it } from 'vitest';
import { fingerprintKey, redactSecrets, redactText } from './redact.js';

describe('redactSecrets', () => {
  it.each([
    'sk-abcdefghijklmnop1234',
    'sk-proj-AbC_dEf-123456789012345678901234',
    'sk-svcacct-abcdefghijklmnopqrstuv',
    'sk-admin-abcdefghijklmnopqrstuv',
  ])('masks the key %s wherever it appears', (key) => {
    const out = redactSecrets(`Incorrect API key provided: ${key}. (key=${key}) "${key}"`);
    expect(out).not.toContain(key);
    expect(out).not.toContain(key.slice(-8));
    expect(out).toContain('[REDACTED_KEY]');
  });

  it('masks Authorization values, Bearer and Basic, whatever the case', () => {
    expect(redactSecrets('authorization: Bearer abc.def-ghi_jkl')).toBe('authorization: Bearer [REDACTED]');
    expect(redactSecrets('Authorization: basic dXNlcjpwYXNz')).toBe('Authorization: basic [REDACTED]');
  });

  it('masks a key sent as a Bearer token', () => {
    const out = redactSecrets('Bearer sk-proj-abcdefghijklmnop');
    expect(out).not.toContain('abcdefghijklmnop');
  });

  it('leaves ordinary text alone', () => {
    const text = 'model gpt-4o-2024-08-06 answered in 120 ms; task-list ok; ask-me later';
    expect(redactSecrets(text)).toBe(text);
  });

  it('can be called repeatedly (no regex state carried between calls)', () => {
    const key = 'sk-abcdefghijklmnop1234';
    for (let i = 0; i < 3; i++) expect(redactSecrets(`x ${key}`)).toBe('x [REDACTED_KEY]');
  });
});

describe('fingerprintKey', () => {
  it('keeps the kind prefix and the last four characters', () => {
    expect(fingerprintKey('sk-abcdefghijklmnopqrstuvwxyz-wxyz')).toBe('sk-...wxyz');
    expect(fingerprintKey('sk-proj-abcdefghijklmnopqrstuvwx-abcd')).toBe('sk-proj-...abcd');
    expect(fingerprintKey('sk-svcacct-abcdefghijklmnopqrst9876')).toBe('sk-svcacct-...9876');
    expect(fingerprintKey('sk-admin-abcdefghijklmnopqrst4321')).toBe('sk-admin-...4321');
  });

  it('gives no prefix for keys of another shape', () => {
    expect(fingerprintKey('azure-0123456789abcdef')).toBe('...cdef');
  });

  it('gives *** for short, empty or missing keys', () => {
    expect(fingerprintKey('sk-short')).toBe('***');
    expect(fingerprintKey('sk-123456789012')).toBe('***');
    expect(fingerprintKey('')).toBe('***');
    expect(fingerprintKey(undefined)).toBe('***');
    expect(fingerprintKey(null)).toBe('***');
  });

  it('never contains more than four characters of the secret part', () => {
    const key = 'sk-proj-SECRETSECRETSECRET1234';
    const fp = fingerprintKey(key);
    expect(fp).not.toContain('SECRET');
    expect(fp.endsWith('1234')).toBe(true);
  });
});

describe('redactText (logged prompts and completions)', () => {
  it.each(['jane.doe@example.com', 'a.b+tag@sub.example.co.uk', 'X_Y-z%1@host-name.io'])(
    'masks the e-mail address %s',
    (email) => {
      const out = redactText(`write to ${email}, thanks`);
      expect(out).toBe('write to [REDACTED_EMAIL], thanks');
    },
  );

  it.each([
    '+1 (415) 555-0134',
    '415-555-0134',
    '415.555.0134',
    '+44 20 7946 0958',
    '555-0134',
    '0612345678',
    '+33 6 12 34 56 78',
  ])('masks the phone number %s', (phone) => {
    const out = redactText(`call ${phone} today`);
    expect(out).toBe('call [REDACTED_PHONE] today');
  });

  it('masks keys and Authorization values too, before the personal data', () => {
    const out = redactText(
      'key sk-proj-AbCdEfGhIjKlMnOp1234 header Authorization: Bearer abc.def.ghi mail me@x.io',
    );
    expect(out).toBe('key [REDACTED_KEY] header Authorization: Bearer [REDACTED] mail [REDACTED_EMAIL]');
  });

  it('leaves text without personal data alone (short numbers, words, at-signs without a domain)', () => {
    const text = 'I have 3 cats and 12 dogs; version 1.2.3; room 42B; @mention; user@localhost; 123-456';
    expect(redactText(text)).toBe(text);
  });

  it('masks every match of extra patterns, global or not', () => {
    const out = redactText('tickets ACME-123456, ACME-654321; codenames project-falcon and PROJECT-eagle', [
      /ACME-\d{6}/g,
      /project-[a-z]+/i,
    ]);
    expect(out).toBe('tickets [REDACTED], [REDACTED]; codenames [REDACTED] and [REDACTED]');
  });

  it("does not change the caller's non-global pattern, and gives the same result when called again", () => {
    const re = /secret-\w+/;
    const first = redactText('secret-a secret-b', [re]);
    expect(redactText('secret-a secret-b', [re])).toBe(first);
    expect(first).toBe('[REDACTED] [REDACTED]');
    expect(re.global).toBe(false);
    expect(re.lastIndex).toBe(0);
  });

  it('masks data inside a JSON-serialized prompt (what the call log line holds)', () => {
    const prompt = JSON.stringify([
      { role: 'user', content: 'me: jane@example.com / +1 415 555 0134 / sk-abcdefghijklmnop1234' },
    ]);
    const out = redactText(prompt);
    expect(out).not.toMatch(/jane|555|abcdefghijklmnop/);
    expect(JSON.parse(out)[0].content).toBe('me: [REDACTED_EMAIL] / [REDACTED_PHONE] / [REDACTED_KEY]');
  });

  it('handles long runs without a match (32k characters of address or digit characters) and still masks what follows', () => {
    for (const run of [
      'a'.repeat(32_000),
      'a.'.repeat(16_000),
      '1-'.repeat(16_000) + 'x',
      '-'.repeat(32_000),
    ]) {
      const out = redactText(`${run} then bob@example.org`);
      expect(out.endsWith('then [REDACTED_EMAIL]')).toBe(true);
    }
  });
});
