import { describe, expect, it } from 'vitest';
import { MAX_RESET_MS, parseResetDuration } from '../../lib/pacing/upstream-rate-limits.js';

/** The RegExp parser the scanner replaced (05d10ce), as the reference. */
function reference(text: string | null | undefined): number | undefined {
  if (!text) return undefined;
  const t = text.trim();
  if (!/^(?:\d+(?:\.\d+)?(?:h|ms|m|s|us|µs|ns))+$/.test(t)) return undefined;
  const unit: Record<string, number> = {
    h: 3_600_000,
    m: 60_000,
    s: 1_000,
    ms: 1,
    us: 1e-3,
    µs: 1e-3,
    ns: 1e-6,
  };
  let ms = 0;
  for (const [, n, u] of t.matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)/g)) ms += Number(n) * unit[u];
  return Number.isFinite(ms) && ms <= MAX_RESET_MS ? ms : undefined;
}

const CASES = [
  '1.5s',
  '6m0s',
  '1h2m3s',
  '500ms',
  'abc',
  '1x',
  '',
  ' ',
  '  2s  ',
  '9'.repeat(400) + 's',
  '24h',
  '24h1ms',
  '1e3s',
  '-1s',
  '+1s',
  '.5s',
  '1.s',
  '1..5s',
  '1s2',
  's',
  'ms',
  '1mss',
  '1m5',
  '1µs',
  '1us',
  '1ns',
  '1h ',
  '1 s',
  '1S',
  '1H',
  '0s',
  '00.000s',
  '1m1m1m',
  '٣s',
  '1\u00a0s',
  '1s\n',
  '\t3ms',
  '1.5h',
  '23h59m59.999s',
  '1d',
  '1hm',
  '1sms',
  '10us10ns',
  '0.0000001ns',
  'Infinitys',
  'NaNs',
  '1_000s',
  '0x10s',
];

describe('parseResetDuration (scanner) against the RegExp parser it replaced', () => {
  it.each(CASES.map((c) => [JSON.stringify(c), c]))('%s', (_name, text) => {
    expect(parseResetDuration(text)).toBe(reference(text));
  });

  it('random strings over the grammar alphabet agree', () => {
    const alphabet = ['0', '1', '5', '9', '.', 'h', 'm', 's', 'u', 'µ', 'n', ' ', 'x'];
    let seed = 42;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 20_000; i++) {
      const len = 1 + Math.floor(rnd() * 8);
      let s = '';
      for (let j = 0; j < len; j++) s += alphabet[Math.floor(rnd() * alphabet.length)];
      expect([s, parseResetDuration(s)]).toEqual([s, reference(s)]);
    }
  });
});
