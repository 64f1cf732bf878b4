import { describe, expect, it } from 'vitest';
import { fingerprintKey, redactSecrets } from './redact.js';

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
