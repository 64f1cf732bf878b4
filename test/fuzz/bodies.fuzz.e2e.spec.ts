import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatRequestSchema } from '../../lib/index.js';
import { enforceInputLimits } from '../../lib/call/input-limits.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { PLATFORMS, auth, startSampleApp, userMessage, type SampleAppHandle } from '../support/sample-app.js';

/**
 * Malformed bodies against the sample's chat routes. Every case must get a 4xx JSON error of the
 * contract (never a 5xx, HTML or a stack trace), no upstream call may happen, and the app must keep
 * serving. Reproduce a failure with FUZZ_SEED=<the printed seed>.
 */
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
const CASES_PER_PLATFORM = Number(process.env.FUZZ_CASES ?? 1_000);
const CONCURRENCY = 8;
console.log(`fuzz seed: ${SEED} (reproduce with FUZZ_SEED=${SEED})`);

// ---- seeded PRNG ------------------------------------------------------------------------------

type Rng = () => number;
function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const int = (rng: Rng, min: number, max: number) => min + Math.floor(rng() * (max - min + 1));
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)];

// ---- cases ------------------------------------------------------------------------------------

interface Case {
  kind: string;
  route: string;
  contentType: string;
  body: Buffer;
}

const ROUTES = ['/chat', '/chat/stream', '/chat/moderated'];
const JSON_TYPE = /^\s*application\/json\s*(;.*)?$/i;
const DEFAULT_LIMITS = { maxMessages: 50, maxChars: 32_000, maxPromptTokens: 8_000 };
const FORBIDDEN_KEYS = ['__proto__', 'constructor', 'prototype'];

/** Defines `key` as an own enumerable property (so `__proto__` is a key, not the prototype). */
function own(obj: Record<string, unknown>, key: string, value: unknown): Record<string, unknown> {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  return obj;
}

function randomText(rng: Rng): string {
  return pick(rng, [
    'hello',
    'What is 2+2?',
    '',
    ' ',
    'ünïcødé ✓ 🚀',
    'line\nbreak',
    'x'.repeat(int(rng, 1, 200)),
    'a\u0000b',
    'tab\tquote"back\\slash',
  ]);
}

function validMessage(rng: Rng): Record<string, unknown> {
  const role = pick(rng, ['system', 'developer', 'user', 'assistant']);
  const content =
    rng() < 0.7
      ? randomText(rng)
      : Array.from({ length: int(rng, 1, 3) }, () => ({ type: 'text', text: randomText(rng) }));
  const m: Record<string, unknown> = { role, content };
  if (rng() < 0.1) m.name = 'bob';
  return m;
}

function validBody(rng: Rng): Record<string, unknown> {
  const body: Record<string, unknown> = {
    messages: Array.from({ length: int(rng, 1, 4) }, () => validMessage(rng)),
  };
  if (rng() < 0.3) body.max_tokens = int(rng, 1, 5000);
  if (rng() < 0.3) body.temperature = rng() * 2;
  if (rng() < 0.2) body.top_p = rng();
  if (rng() < 0.2) body.stop = rng() < 0.5 ? 'END' : ['a', 'b'];
  if (rng() < 0.1) body.seed = int(rng, -1000, 1000);
  return body;
}

function wrongValue(rng: Rng): unknown {
  return pick(rng, [
    null,
    0,
    -1,
    1.5,
    1e308,
    true,
    false,
    '',
    '100',
    '0.5',
    'null',
    '[]',
    [],
    [null],
    [1, 2, 3],
    {},
    { role: 'user' },
    'x'.repeat(int(rng, 65, 300)),
    { $gt: '' },
    ['user'],
  ]);
}

/** Paths of a body where a value can be replaced. */
function paths(body: Record<string, unknown>): Array<Array<string | number>> {
  const out: Array<Array<string | number>> = [];
  const walk = (v: unknown, p: Array<string | number>) => {
    out.push(p);
    if (Array.isArray(v)) v.forEach((x, i) => walk(x, [...p, i]));
    else if (v && typeof v === 'object')
      for (const k of Object.keys(v)) walk((v as Record<string, unknown>)[k], [...p, k]);
  };
  walk(body, []);
  return out.filter((p) => p.length > 0);
}

function setAt(root: Record<string, unknown>, path: Array<string | number>, value: unknown): void {
  let cur: any = root;
  for (const k of path.slice(0, -1)) cur = cur[k];
  const last = path[path.length - 1];
  if (value === undefined) {
    if (Array.isArray(cur)) cur.splice(last as number, 1);
    else delete cur[last];
  } else if (typeof last === 'string' && !Array.isArray(cur)) own(cur, last, value);
  else cur[last] = value;
}

/** Structural mutations of a valid body (most of them make it invalid; the oracle drops the rest). */
const MUTATIONS: Array<(rng: Rng, body: Record<string, unknown>) => string> = [
  (rng, b) => {
    setAt(b, pick(rng, paths(b)), wrongValue(rng));
    return 'wrong-type';
  },
  (rng, b) => {
    setAt(b, pick(rng, paths(b)), undefined);
    return 'missing-field';
  },
  (rng, b) => {
    const targets: Array<Record<string, unknown>> = [b, ...(b.messages as Array<Record<string, unknown>>)];
    own(
      pick(rng, targets),
      pick(rng, [
        'logprobs',
        'logit_bias',
        'n',
        'tools',
        'tool_choice',
        'functions',
        'stream',
        'response_format',
        'user',
        'store',
        'metadata',
        '',
        ' ',
        'Messages',
        'role\u0000',
      ]),
      wrongValue(rng) ?? 1,
    );
    return 'unknown-key';
  },
  (rng, b) => {
    const m = pick(rng, b.messages as Array<Record<string, unknown>>);
    m.role = pick(rng, [
      'tool',
      'function',
      '',
      'USER',
      'user ',
      'system\u0000',
      'root',
      'admin',
      'assistant\n',
      'ｕｓｅｒ',
    ]);
    return 'bad-role';
  },
  (rng, b) => {
    const m = pick(rng, b.messages as Array<Record<string, unknown>>);
    m.content = [
      pick(rng, [
        { type: 'image_url', image_url: { url: 'https://x.test/a.png' } },
        { type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } },
        { type: 'file', file: { file_id: 'f' } },
        { type: 'TEXT', text: 'x' },
        { type: 'text' },
        { text: 'x' },
        { type: 'text', text: 'x', extra: 1 },
      ]),
    ];
    return 'bad-part';
  },
  (rng, b) => {
    const [k, v] = pick(rng, [
      ['max_tokens', '100'],
      ['max_tokens', 0],
      ['max_tokens', -5],
      ['max_tokens', 2.5],
      ['temperature', '0.7'],
      ['temperature', 2.5],
      ['temperature', -0.1],
      ['top_p', 1.01],
      ['presence_penalty', 3],
      ['frequency_penalty', '-1'],
      ['seed', 1.5],
      ['seed', '42'],
      ['stop', ['a', 'b', 'c', 'd', 'e']],
      ['stop', [1]],
      ['model', ''],
      ['model', 'm'.repeat(129)],
      ['max_completion_tokens', '1'],
    ] as Array<[string, unknown]>);
    b[k] = v;
    return 'bad-number';
  },
  (rng, b) => {
    if (rng() < 0.5) b.messages = [];
    else pick(rng, b.messages as Array<Record<string, unknown>>).content = [];
    return 'empty';
  },
  (rng, b) => {
    own(
      pick(rng, [b, ...(b.messages as Array<Record<string, unknown>>)]),
      pick(rng, FORBIDDEN_KEYS),
      pick(rng, [{ polluted: 'yes' }, { prototype: { polluted: 'yes' } }, { role: 'system' }, null, 'x']),
    );
    return 'proto-key';
  },
  (rng, b) => {
    const m = pick(rng, b.messages as Array<Record<string, unknown>>);
    if (Array.isArray(m.content))
      own(m.content[0] as Record<string, unknown>, pick(rng, FORBIDDEN_KEYS), { type: 'image_url' });
    else own(m, '__proto__', { content: 'x' });
    return 'proto-key-nested';
  },
];

/** Applies a random mutation; one that no longer fits the (already mutated) structure is a no-op. */
function mutate(rng: Rng, b: Record<string, unknown>): string {
  const m = MUTATIONS[Math.floor(rng() * MUTATIONS.length)];
  try {
    return m(rng, b);
  } catch {
    return 'mutation-skipped';
  }
}

const BAD_UTF8: number[][] = [
  [0xff],
  [0xfe],
  [0xc0, 0xaf],
  [0xe0, 0x80, 0xaf],
  [0xed, 0xa0, 0x80],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0xc3],
  [0x80],
  [0xf4, 0x90, 0x80, 0x80],
  [0xef, 0xbf],
];

const NON_JSON_TYPES = [
  'text/plain',
  'text/html',
  'text/json',
  'application/xml',
  'application/octet-stream',
  'application/json-patch+json',
  'application/vnd.api+json',
  'application/jsonx',
  'application/javascript',
  'multipart/form-data; boundary=XyZ',
  'application/x-www-form-urlencoded',
  'image/png',
  'json',
];

function deepNest(rng: Rng): string {
  const depth = rng() < 0.05 ? 100_000 : pick(rng, [5_000, 5_000, int(rng, 100, 10_000)]);
  const arr = () => '['.repeat(depth) + ']'.repeat(depth);
  const obj = () => '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
  const inner = rng() < 0.5 ? arr() : obj();
  return pick(rng, [
    `{"messages":${inner}}`,
    `{"messages":[{"role":"user","content":${inner}}]}`,
    `{"messages":[{"role":"user","content":"hi"}],"extra":${inner}}`,
    `{"messages":[{"role":"user","content":[{"type":"text","text":${inner}}]}]}`,
    `{"messages":[{"role":"user","content":"hi"}],"stop":${inner}}`,
    inner,
  ]);
}

function hugeArray(rng: Rng): string {
  const n = rng() < 0.1 ? 60_000 : int(rng, 1_000, 10_000);
  const el = pick(rng, ['1', 'null', '{}', '"x"', '[]', '{"role":"user","content":"x"}', '{"role":"user"}']);
  return pick(rng, [
    `{"messages":[${Array(n).fill(el).join(',')}]}`,
    `[${Array(n).fill(el).join(',')}]`,
    // 20,000 parts of 2 characters joined by newlines: 59,999 characters, over maxChars.
    `{"messages":[{"role":"user","content":[${Array(20_000).fill('{"type":"text","text":"ab"}').join(',')}]}]}`,
    `{"messages":[{"role":"user","content":"hi"}],"stop":[${Array(n).fill('"s"').join(',')}]}`,
    `{"messages":[{"role":"user","content":"${'z'.repeat(rng() < 0.2 ? 900_000 : int(rng, 40_000, 100_000))}"}]}`,
    `{"messages":[{"role":"user","content":"hi"}],"${'k'.repeat(int(rng, 1_000, 500_000))}":1}`,
  ]);
}

function syntaxBroken(rng: Rng): string {
  const s = JSON.stringify(validBody(rng));
  return pick(rng, [
    () => s.slice(0, int(rng, 0, s.length - 1)),
    () => s.slice(0, -1) + ',}',
    () => s.replace(/"/g, "'"),
    () => s.replace(/:/, ':NaN,"x":'),
    () => `${s}${s}`,
    () => `/* comment */${s}`,
    () => s.replace('"messages"', 'messages'),
    () => s.replace(/"content":"/, '"content":"\u0001\n'),
    () => s.replace(/\]/, '],]'),
    () => `${s.slice(0, int(rng, 0, s.length))}\\${s.slice(int(rng, 0, s.length))}`,
    () => s.replace(/"role"/, '"role":"user","role"').replace(/"role":"user","role":/, '"role":"user",'),
    () => '{"messages":[{"role":"user","content":"\\ud800\\u12"}]}',
    () => '{"messages":[{"role":"user","content":"\\x41"}]}',
  ])();
}

function primitive(rng: Rng): string {
  return pick(rng, [
    '',
    ' ',
    '\n',
    'null',
    '0',
    '-1',
    '1e999',
    'true',
    'false',
    '""',
    '"messages"',
    '[]',
    '[{}]',
    '{}',
    '{"messages":null}',
    '{"messages":[null]}',
    '{"messages":[{}]}',
    '{"messages":{}}',
    '{"messages":"[]"}',
    '{"messages":[{"role":"user","content":null}]}',
    '{"messages":[{"role":null,"content":"x"}]}',
    '\ufeff{}',
  ]);
}

function makeCase(rng: Rng): Case {
  const route = pick(rng, ROUTES);
  const r = rng();
  let kind: string;
  let body: Buffer;
  let contentType = pick(rng, [
    'application/json',
    'application/json',
    'application/json; charset=utf-8',
    'APPLICATION/JSON',
    'application/json;charset=UTF-8',
  ]);
  if (r < 0.4) {
    const b = validBody(rng);
    kind = mutate(rng, b);
    if (rng() < 0.3) mutate(rng, b);
    body = Buffer.from(JSON.stringify(b));
  } else if (r < 0.52) {
    kind = 'syntax';
    body = Buffer.from(syntaxBroken(rng));
  } else if (r < 0.57) {
    kind = 'deep-nesting';
    body = Buffer.from(deepNest(rng));
  } else if (r < 0.6) {
    kind = 'huge';
    body = Buffer.from(hugeArray(rng));
  } else if (r < 0.72) {
    kind = 'invalid-utf8';
    const s = Buffer.from(rng() < 0.5 ? JSON.stringify(validBody(rng)) : syntaxBroken(rng));
    const at = int(rng, 0, s.length);
    body = Buffer.concat([s.subarray(0, at), Buffer.from(pick(rng, BAD_UTF8)), s.subarray(at)]);
  } else if (r < 0.77) {
    kind = 'primitive';
    body = Buffer.from(primitive(rng));
  } else if (r < 0.87) {
    kind = 'content-type';
    contentType = pick(rng, NON_JSON_TYPES);
    body = Buffer.from(
      contentType.startsWith('application/x-www-form-urlencoded')
        ? 'messages[0][role]=user&messages[0][content]=hi&messages%5B1%5D%5Brole%5D=user&messages%5B1%5D%5Bcontent%5D=yo'
        : JSON.stringify(validBody(rng)),
    );
  } else if (r < 0.92) {
    kind = 'charset';
    contentType = pick(rng, [
      'application/json; charset=latin1',
      'application/json; charset=utf-16',
      'application/json; charset=bogus',
      'application/json; charset=',
    ]);
    const b = validBody(rng);
    mutate(rng, b);
    body = Buffer.from(JSON.stringify(b));
  } else {
    kind = 'random-bytes';
    body = Buffer.from(Array.from({ length: int(rng, 0, 2_000) }, () => int(rng, 0, 255)));
  }
  return { kind, route, contentType, body };
}

function hasForbiddenKey(v: unknown): boolean {
  const stack = [v];
  while (stack.length) {
    const x = stack.pop();
    if (x && typeof x === 'object') {
      for (const k of Object.keys(x)) {
        if (FORBIDDEN_KEYS.includes(k)) return true;
        stack.push((x as Record<string, unknown>)[k]);
      }
    }
  }
  return false;
}

/**
 * Whether a correct server may accept the case (then it is not a malformed body, and is regenerated).
 * Bodies are decoded as the servers do (invalid UTF-8 becomes U+FFFD); any charset parameter is
 * ignored, as Fastify ignores it.
 */
function acceptable(c: Case): boolean {
  if (!JSON_TYPE.test(c.contentType)) return false;
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder('utf-8').decode(c.body));
  } catch {
    return false;
  }
  if (!v || typeof v !== 'object' || Array.isArray(v) || hasForbiddenKey(v)) return false;
  const parsed = ChatRequestSchema.safeParse(v);
  if (!parsed.success) return false;
  try {
    enforceInputLimits(parsed.data, DEFAULT_LIMITS);
  } catch {
    return false;
  }
  return true;
}

function generate(seed: number, count: number): { cases: Case[]; dropped: number } {
  const rng = mulberry32(seed);
  const cases: Case[] = [];
  let dropped = 0;
  while (cases.length < count) {
    const c = makeCase(rng);
    // Deep and huge bodies are malformed by construction (and costly to check twice).
    if (c.kind !== 'deep-nesting' && c.kind !== 'huge' && acceptable(c)) dropped++;
    else cases.push(c);
  }
  return { cases, dropped };
}

// ---- the run ----------------------------------------------------------------------------------

const STACK = /\n\s+at |\bat [\w.<>]+ \(|\.(ts|js|mjs):\d+|node_modules/;

function describeCase(c: Case, i: number): string {
  const preview = c.body
    .subarray(0, 160)
    .toString('latin1')
    .replace(/[^\x20-\x7e]/g, '?');
  return `seed ${SEED} case #${i} (${c.kind}, ${c.route}, content-type "${c.contentType}", ${c.body.length} bytes): ${preview}`;
}

describe.each(PLATFORMS)('fuzzing the chat routes with malformed bodies (%s)', (platform) => {
  let fake: FakeOpenAIServer;
  let h: SampleAppHandle;
  let baseUrl: string;
  const protoBefore = Object.getOwnPropertyNames(Object.prototype).sort();
  const { cases, dropped } = generate(SEED + PLATFORMS.indexOf(platform), CASES_PER_PLATFORM);

  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startSampleApp(platform, fake, {
      MODERATION: 'on',
      RATE_LIMIT_RPM: '1000000',
      RATE_LIMIT_TPM: '100000000',
    });
    await h.app.listen(0, '127.0.0.1');
    baseUrl = `http://127.0.0.1:${(h.app.getHttpServer().address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });

  it(`${CASES_PER_PLATFORM} malformed bodies: each a 4xx JSON error of the contract, no upstream call, the app still up`, async () => {
    const failures: string[] = [];
    const kinds = new Map<string, number>();
    let next = 0;
    const worker = async () => {
      while (next < cases.length) {
        const i = next++;
        const c = cases[i];
        kinds.set(c.kind, (kinds.get(c.kind) ?? 0) + 1);
        try {
          const res = await request(baseUrl)
            .post(c.route)
            .set(auth())
            .set('content-type', c.contentType)
            .serialize((b: unknown) => b as string)
            .timeout(15_000)
            .send(c.body as unknown as string);
          const problem = checkResponse(res);
          if (problem) failures.push(`${describeCase(c, i)}\n    -> ${problem}`);
        } catch (err) {
          failures.push(`${describeCase(c, i)}\n    -> request failed: ${(err as Error).message}`);
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    console.log(
      `fuzz ${platform}: ${cases.length} cases (${dropped} acceptable bodies regenerated), by kind: ${JSON.stringify(Object.fromEntries(kinds))}`,
    );
    expect(failures.slice(0, 10), `${failures.length} failing case(s), seed ${SEED}`).toEqual([]);
    expect(
      fake.requests.map((r) => r.path),
      `upstream calls, seed ${SEED}`,
    ).toEqual([]);
    expect(
      h.logger.lines.filter((l) => l.level === 'error' || l.level === 'fatal').map((l) => l.message),
    ).toEqual([]);
    expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(protoBefore);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('the app still serves a normal request afterwards', async () => {
    const res = await request(baseUrl).post('/chat').set(auth()).send(userMessage('still alive?'));
    expect(res.status).toBe(200);
    expect(res.body.content).toBe('Echo: still alive?');
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
  });
});

/** What is wrong with a response to a malformed body, or undefined. */
function checkResponse(res: request.Response): string | undefined {
  const text = res.text ?? '';
  if (res.status < 400 || res.status > 499) return `status ${res.status}: ${text.slice(0, 200)}`;
  if (!String(res.headers['content-type'] ?? '').includes('application/json'))
    return `content-type ${res.headers['content-type']}: ${text.slice(0, 200)}`;
  if (/^\s*</.test(text)) return `HTML body: ${text.slice(0, 200)}`;
  if (STACK.test(text)) return `stack trace or file path: ${text.slice(0, 300)}`;
  if (text.length > 8_192) return `a ${text.length}-byte error body (input echoed?)`;
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text);
  } catch {
    return `not JSON: ${text.slice(0, 200)}`;
  }
  if (body.statusCode !== res.status) return `statusCode ${String(body.statusCode)} != ${res.status}`;
  if (typeof body.error !== 'string' || !/^[a-z0-9_]+$/.test(body.error))
    return `error ${JSON.stringify(body.error)}`;
  if (typeof body.message !== 'string' || body.message === '')
    return `message ${JSON.stringify(body.message)}`;
  if (typeof body.request_id !== 'string' || body.request_id !== res.headers['x-request-id'])
    return `request_id ${JSON.stringify(body.request_id)} vs header ${res.headers['x-request-id']}`;
  return undefined;
}
