// Section E of the bench: what the library adds to a streamed call. `OpenAIService.stream()` (Chat
// Completions) and `streamResponse()` (Responses) against the same streams through a plain SDK client
// (`stream: true`), the fake upstream in a child process (stream-upstream.ts):
// - time to first content chunk, from before `stream()` / `create()` to the consumer's first content
//   chunk, on streams sent with no delay; also less, per call, the upstream's own time (its request
//   arrived -> that chunk written, both stamped by the upstream), so the fake server's work drops out;
// - per-chunk latency, on streams with a delay between SSE events (each event its own socket read): the
//   upstream stamps every content chunk with `process.hrtime.bigint()` when it writes it, the consumer
//   subtracts it from its own clock when it receives the chunk (write -> consumer: kernel, wake-up and
//   everything in this process). In this process two more times are noted per chunk: when the HTTP
//   client read the socket data that held it (socket read -> consumer: all the JavaScript of the path,
//   without the kernel and the wake-up, whose noise is far above the 10 µs target) and when the SDK's
//   stream iterator yielded the chunk object (SDK yield -> consumer: the library's iterator alone).
// Run alone: node bench/dist/bench/stream.bench.js [calls] [streams] [options] (see its header).
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as inspector from 'node:inspector/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import OpenAI from 'openai';
import { Stream } from 'openai/core/streaming';
import * as chatStreaming from 'openai/lib/chat-completions/streaming';
import { BudgetService, OPENAI_CLIENT, OpenAIModule, OpenAIService, UsageService } from '../../lib/index.js';
import { BODY, MODEL, USER, benchOptions, type Pipeline } from './options.js';
import { Samples, summarize, table, us, type Summary } from './stats.js';
import { piece } from './stream-upstream.js';

export interface StreamingSettings {
  /** Content chunks per stream. */
  chunks: number;
  /** Delay between the SSE events of a stream in the per-chunk part, ms. */
  delayMs: number;
  /** Time to first chunk: calls per variant before measuring, measured calls, consecutive calls of a variant. */
  ttfb: { warmup: number; calls: number; block: number };
  /** Per-chunk latency: streams per variant before measuring, measured streams, consecutive streams of a variant. */
  perChunk: { warmup: number; streams: number; block: number };
  /** Only the variants whose name contains this (for profiling one of them). */
  only?: string;
  /** Write a CPU profile of each part's measured calls (warm-up left out) to this directory. */
  profileDir?: string;
}

export const STREAMING_DEFAULTS: StreamingSettings = {
  chunks: 50,
  delayMs: 1,
  ttfb: { warmup: 200, calls: 2_000, block: 100 },
  perChunk: { warmup: 10, streams: 120, block: 10 },
};

export const STREAMING_QUICK: StreamingSettings = {
  chunks: 50,
  delayMs: 1,
  ttfb: { warmup: 50, calls: 300, block: 50 },
  perChunk: { warmup: 4, streams: 20, block: 5 },
};

type Endpoint = 'chat' | 'responses';
/** `raw`: the plain SDK client (each endpoint's baseline); `client`: the module's client; `library`: the service. */
type Kind = 'raw' | 'client' | 'library';

export interface TtfbResult {
  name: string;
  endpoint: Endpoint;
  kind: Kind;
  /** Time to the first content chunk, ms. */
  summary: Summary;
  /** The same less the upstream's own time for that call (its request arrived -> the chunk written), ms. */
  clientSide: Summary;
  /** CPU of this process per call (the whole stream consumed, off-path writes included), ms. */
  cpuPerCallMs: number;
  /** GC pauses that began during this variant's blocks, per 100 calls. */
  gc: Pauses;
}

export interface ChunkResult {
  name: string;
  endpoint: Endpoint;
  kind: Kind;
  chunks: number;
  /** Upstream write -> consumer, per content chunk, ms. */
  wire: Summary;
  /** Socket read that delivered the chunk -> consumer, ms. */
  readToConsumer: Summary;
  /** SDK iterator yield -> consumer, per content chunk (same process, same chunk object), ms. */
  sdkToConsumer: Summary;
  /** Chunks whose socket read also delivered the chunk before (the per-event delay did not separate them). */
  sharedReads: number;
  /** CPU of this process per content chunk (every event, the per-call work and off-path writes included), ms. */
  cpuPerChunkMs: number;
  /** GC pauses that began during this variant's blocks, per 100 streams. */
  gc: Pauses;
}

/** A count of GC pauses and their total duration (ms). */
export interface Pauses {
  n: number;
  ms: number;
}

/** The GC pauses of this process (`gc` performance entries) while it observes. */
class GcPauses {
  private readonly entries: Array<{ start: number; ms: number }> = [];
  private readonly observer = new PerformanceObserver((list) => this.add(list.getEntries()));
  constructor() {
    this.observer.observe({ entryTypes: ['gc'] });
  }
  private add(list: ReadonlyArray<{ startTime: number; duration: number }>): void {
    for (const e of list) this.entries.push({ start: e.startTime, ms: e.duration });
  }
  stop(): void {
    this.add(this.observer.takeRecords());
    this.observer.disconnect();
  }
  /** The pauses that began within the `[start, end)` intervals (`performance.now()` ms), per `per` units. */
  within(intervals: Array<[number, number]>, units: number, per: number): Pauses {
    let n = 0;
    let ms = 0;
    for (const e of this.entries) {
      if (intervals.some(([a, b]) => e.start >= a && e.start < b)) {
        n++;
        ms += e.ms;
      }
    }
    return { n: (n / units) * per, ms: (ms / units) * per };
  }
}

export interface StreamingResult {
  settings: StreamingSettings;
  ttfb: TtfbResult[];
  perChunk: ChunkResult[];
}

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

/** CLOCK_MONOTONIC in ns as a number (exact below 2^53 ns, 104 days of uptime; a few ns off after that). */
const nowNs = (): number => Number(process.hrtime.bigint());

/** The last socket read that returned data in this process (ns), and how many there were. */
let lastRead = { ns: 0, seq: 0 };

/** When the SDK's stream iterator yielded an event, and the last socket read before it. */
interface Yielded {
  ns: number;
  readNs: number;
  readSeq: number;
}
const sdkYields = new WeakMap<object, Yielded>();
let patched = false;

interface EventSource {
  [Symbol.asyncIterator](): AsyncIterator<unknown>;
}

/** `it`, its every `next()` resolving one `.then` later with its event's time noted. */
function stamped(it: AsyncIterator<unknown>): AsyncIterator<unknown> {
  const next = it.next.bind(it);
  it.next = (...args: [] | [unknown]) =>
    next(...args).then((r) => {
      if (!r.done && typeof r.value === 'object' && r.value !== null)
        sdkYields.set(r.value, { ns: nowNs(), readNs: lastRead.ns, readSeq: lastRead.seq });
      return r;
    });
  return it;
}

/**
 * Records when the SDK's stream iterator yields each event, for every SDK stream (the raw calls' and the
 * library's alike): the outermost iterator the SDK hands out, i.e. its `Stream`'s for the Responses API,
 * and for Chat Completions the one `normalizeChatCompletionStream` installs on the stream (it copies
 * every chunk to fill in `finish_reason`, over the `Stream`'s own iterator). And when fetch (undici)
 * reads data from a socket: it pulls each arrival with `socket.read()` in its `readable` handler.
 */
function patchSdkStream(): void {
  if (patched) return;
  patched = true;
  const socket = Socket.prototype as unknown as { read: (this: Socket, ...args: unknown[]) => unknown };
  const read = socket.read;
  socket.read = function (this: Socket, ...args: unknown[]): unknown {
    const data = read.apply(this, args);
    if (data !== null) lastRead = { ns: nowNs(), seq: lastRead.seq + 1 };
    return data;
  };
  const proto = Stream.prototype as unknown as EventSource;
  const original = proto[Symbol.asyncIterator];
  proto[Symbol.asyncIterator] = function (this: EventSource): AsyncIterator<unknown> {
    const it = original.call(this);
    // A stream with an iterator of its own (the chat normalizer) reads this one: that one is stamped.
    return Object.hasOwn(this, Symbol.asyncIterator) ? it : stamped(it);
  };
  const chat = chatStreaming as { normalizeChatCompletionStream: (stream: unknown) => unknown };
  const normalize = chat.normalizeChatCompletionStream;
  chat.normalizeChatCompletionStream = (stream) => {
    const s = normalize(stream) as EventSource;
    const own = s[Symbol.asyncIterator];
    s[Symbol.asyncIterator] = function (this: EventSource) {
      return stamped(own.call(this));
    };
    return s;
  };
}

/**
 * Starts the V8 CPU profiler of this process (100 µs sampling) when `dir` is given; the function it
 * returns stops it and writes `<dir>/<name>.cpuprofile`, saying on stderr what the profile covers.
 */
async function profiling(
  dir: string | undefined,
): Promise<((name: string, covers: string) => Promise<void>) | undefined> {
  if (!dir) return undefined;
  const session = new inspector.Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 100 });
  await session.post('Profiler.start');
  return async (name, covers) => {
    const { profile } = await session.post('Profiler.stop');
    session.disconnect();
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${name}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    log(`CPU profile of ${covers}: ${file}`);
  };
}

/** The child process serving the stamped streams. */
class StreamUpstream {
  private constructor(
    private readonly child: ChildProcess,
    readonly ttfbURL: string,
    readonly chunksURL: string,
  ) {}
  static async start(chunks: number, delayMs: number): Promise<StreamUpstream> {
    const child = fork(join(__dirname, 'stream-upstream.js'), [String(chunks), String(delayMs)], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      execArgv: [],
    });
    const urls = await new Promise<{ ttfbURL: string; chunksURL: string }>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`stream upstream exited with code ${code}`)));
      child.once('message', (m: { ttfbURL: string; chunksURL: string }) => resolve(m));
    });
    child.removeAllListeners('exit');
    return new StreamUpstream(child, urls.ttfbURL, urls.chunksURL);
  }
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.disconnect();
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3_000))]);
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

interface Opened {
  events: AsyncIterable<unknown>;
  /** The library's `finished` (settlement done, real usage), awaited after the last event. */
  finished?: Promise<unknown>;
}

interface Variant {
  name: string;
  endpoint: Endpoint;
  kind: Kind;
  open: (messages: OpenAI.Chat.ChatCompletionMessageParam[]) => Promise<Opened>;
  drain: () => Promise<void>;
}

/** The text of a content chunk (its piece, see stream-upstream.ts), or undefined for other events. */
function textOf(endpoint: Endpoint, event: unknown): string | undefined {
  let text: string | null | undefined;
  if (endpoint === 'chat') {
    text = (event as OpenAI.Chat.ChatCompletionChunk).choices[0]?.delta?.content;
  } else {
    const e = event as OpenAI.Responses.ResponseStreamEvent;
    if (e.type === 'response.output_text.delta') text = e.delta;
  }
  return text || undefined;
}

interface Recorder {
  ttfb?: Samples;
  /** Time to first chunk less the upstream's own time (its request arrived -> that chunk written). */
  ttfbClient?: Samples;
  wire?: Samples;
  read?: Samples;
  sdk?: Samples;
  /** Counts chunks that came in the same socket read as the chunk before. */
  shared?: { n: number };
}

const NS_PER_MS = 1e6;

/** One call, its stream read to the end; returns its content chunks. Throws on anything unexpected. */
async function runOne(v: Variant, rec: Recorder): Promise<number> {
  const body = JSON.parse(BODY) as { messages: OpenAI.Chat.ChatCompletionMessageParam[] };
  const t0 = nowNs();
  const { events, finished } = await v.open(body.messages);
  let n = 0;
  let previousRead = -1;
  for await (const event of events) {
    const t = nowNs();
    const y = sdkYields.get(event as object);
    // Deleted at once, so the weak map stays small (its entries are work for every scavenge).
    sdkYields.delete(event as object);
    const text = textOf(v.endpoint, event);
    if (text === undefined) continue;
    const { written, received } = piece(text);
    if (n === 0) {
      rec.ttfb?.push((t - t0) / NS_PER_MS);
      rec.ttfbClient?.push((t - t0 - (written - received)) / NS_PER_MS);
    }
    rec.wire?.push((t - written) / NS_PER_MS);
    if (y === undefined) throw new Error(`${v.name}: a chunk the SDK's stream did not yield`);
    rec.read?.push((t - y.readNs) / NS_PER_MS);
    rec.sdk?.push((t - y.ns) / NS_PER_MS);
    if (rec.shared && y.readSeq === previousRead) rec.shared.n++;
    previousRead = y.readSeq;
    n++;
  }
  if (finished) await finished;
  return n;
}

async function context(pipeline: Pipeline, baseURL: string): Promise<INestApplicationContext> {
  return NestFactory.createApplicationContext(OpenAIModule.forRoot(benchOptions(pipeline, baseURL)), {
    logger: false,
    abortOnError: false,
  });
}

/** The variants against one upstream, and the apps to close afterwards. */
async function variantsFor(
  baseURL: string,
  only: string | undefined,
): Promise<{ variants: Variant[]; apps: INestApplicationContext[] }> {
  const bare = await context('bare', baseURL);
  const limited = await context('limited', baseURL);
  const apps = [bare, limited];
  // The baseline: a plain SDK client (SDK retries off like the module's), no wrapper of any kind.
  const plain = new OpenAI({ apiKey: 'sk-bench-0000000000000000000000000000', baseURL, maxRetries: 0 });
  // The module's own client (`@InjectOpenAI()`): the SDK with the module's fetch wrapper.
  const injected = bare.get<OpenAI>(OPENAI_CLIENT);
  const none = async () => undefined;
  const drainOf = (app: INestApplicationContext) => {
    const usage = app.get(UsageService);
    const budgets = app.get(BudgetService);
    return async () => {
      await usage.flush();
      await budgets.flush();
    };
  };
  const rawChat = (client: OpenAI) => async (messages: OpenAI.Chat.ChatCompletionMessageParam[]) => ({
    events: await client.chat.completions.create({
      model: MODEL,
      messages,
      stream: true,
      // What the library always asks for, so the upstream sends the same events.
      stream_options: { include_usage: true },
    }),
  });
  const libChat = (app: INestApplicationContext) => {
    const service = app.get(OpenAIService);
    return async (messages: OpenAI.Chat.ChatCompletionMessageParam[]) => {
      const s = await service.stream({ messages }, { user: USER });
      return { events: s, finished: s.finished };
    };
  };
  const inputOf = (messages: OpenAI.Chat.ChatCompletionMessageParam[]) => messages[0]!.content as string;
  const libResponses = (app: INestApplicationContext) => {
    const service = app.get(OpenAIService);
    return async (messages: OpenAI.Chat.ChatCompletionMessageParam[]) => {
      const s = await service.streamResponse({ input: inputOf(messages) }, { user: USER });
      return { events: s, finished: s.finished };
    };
  };
  const variants: Variant[] = [
    {
      name: 'raw SDK `chat.completions.create({ stream: true })`',
      endpoint: 'chat',
      kind: 'raw',
      open: rawChat(plain),
      drain: none,
    },
    {
      name: 'the same through the module’s client (`@InjectOpenAI()`)',
      endpoint: 'chat',
      kind: 'client',
      open: rawChat(injected),
      drain: none,
    },
    {
      name: '`OpenAIService.stream()`, bare',
      endpoint: 'chat',
      kind: 'library',
      open: libChat(bare),
      drain: drainOf(bare),
    },
    {
      name: '`stream()`, production profile (limits, budgets, usage; memory)',
      endpoint: 'chat',
      kind: 'library',
      open: libChat(limited),
      drain: drainOf(limited),
    },
    {
      name: 'raw SDK `responses.create({ stream: true })`',
      endpoint: 'responses',
      kind: 'raw',
      open: async (messages) => ({
        events: await plain.responses.create({
          model: MODEL,
          input: inputOf(messages),
          stream: true,
          store: false,
        }),
      }),
      drain: none,
    },
    {
      name: '`OpenAIService.streamResponse()`, bare',
      endpoint: 'responses',
      kind: 'library',
      open: libResponses(bare),
      drain: drainOf(bare),
    },
    {
      name: '`streamResponse()`, production profile (limits, budgets, usage; memory)',
      endpoint: 'responses',
      kind: 'library',
      open: libResponses(limited),
      drain: drainOf(limited),
    },
  ];
  return { variants: only ? variants.filter((v) => v.name.includes(only)) : variants, apps };
}

/** One call per variant: the whole stream arrives, and the stamps are on this process's clock. */
async function check(variants: Variant[], chunks: number): Promise<void> {
  for (const v of variants) {
    const wire = new Samples(chunks);
    const n = await runOne(v, { wire });
    if (n !== chunks) throw new Error(`${v.name}: ${n} content chunks, expected ${chunks}`);
    const s = summarize(wire.values());
    if (!(s.min > 0 && s.max < 1_000))
      throw new Error(
        `${v.name}: upstream write -> consumer between ${s.min} and ${s.max} ms: the two processes do not share a monotonic clock`,
      );
    await v.drain();
  }
}

/**
 * Runs `perVariant` calls of every variant in blocks whose order rotates each round (drift spreads over
 * all variants), each block followed by its variant's off-path writes; `measure` false: warm-up.
 */
async function rounds(
  variants: Variant[],
  perVariant: number,
  block: number,
  chunks: number,
  each: (
    v: Variant,
    i: number,
  ) =>
    { rec: Recorder; cpu: (us: number, calls: number) => void; blocks: Array<[number, number]> } | undefined,
): Promise<void> {
  const n = Math.ceil(perVariant / block);
  for (let round = 0; round < n; round++) {
    for (let i = 0; i < variants.length; i++) {
      const vi = (i + round) % variants.length;
      const v = variants[vi]!;
      const count = Math.min(block, perVariant - round * block);
      const m = each(v, vi);
      const started = performance.now();
      const cpu0 = process.cpuUsage();
      for (let k = 0; k < count; k++) {
        const got = await runOne(v, m?.rec ?? {});
        if (got !== chunks) throw new Error(`${v.name}: ${got} content chunks, expected ${chunks}`);
      }
      await v.drain();
      const cpu = process.cpuUsage(cpu0);
      m?.cpu(cpu.user + cpu.system, count);
      m?.blocks.push([started, performance.now()]);
    }
  }
}

async function ttfbPart(baseURL: string, s: StreamingSettings): Promise<TtfbResult[]> {
  const { variants, apps } = await variantsFor(baseURL, s.only);
  try {
    await check(variants, s.chunks);
    const acc = variants.map(() => ({
      samples: new Samples(s.ttfb.calls),
      client: new Samples(s.ttfb.calls),
      cpuUs: 0,
      calls: 0,
      blocks: [] as Array<[number, number]>,
    }));
    log(`E. time to first chunk: ${s.ttfb.warmup} warm-up calls per variant`);
    await rounds(variants, s.ttfb.warmup, s.ttfb.block, s.chunks, () => undefined);
    log(`E. time to first chunk: ${s.ttfb.calls} calls per variant, ${variants.length} variants`);
    const profile = await profiling(s.profileDir);
    const gc = new GcPauses();
    await rounds(variants, s.ttfb.calls, s.ttfb.block, s.chunks, (_, i) => ({
      rec: { ttfb: acc[i]!.samples, ttfbClient: acc[i]!.client },
      cpu: (cpuUs, calls) => {
        acc[i]!.cpuUs += cpuUs;
        acc[i]!.calls += calls;
      },
      blocks: acc[i]!.blocks,
    }));
    gc.stop();
    await profile?.('ttfb', `${s.ttfb.calls * variants.length} calls of ${s.chunks} chunks, no delay`);
    return variants.map((v, i) => ({
      name: v.name,
      endpoint: v.endpoint,
      kind: v.kind,
      summary: summarize(acc[i]!.samples.values()),
      clientSide: summarize(acc[i]!.client.values()),
      cpuPerCallMs: acc[i]!.cpuUs / 1000 / acc[i]!.calls,
      gc: gc.within(acc[i]!.blocks, acc[i]!.calls, 100),
    }));
  } finally {
    for (const app of apps.reverse()) await app.close();
  }
}

async function perChunkPart(baseURL: string, s: StreamingSettings): Promise<ChunkResult[]> {
  const { variants, apps } = await variantsFor(baseURL, s.only);
  try {
    await check(variants, s.chunks);
    const size = s.perChunk.streams * s.chunks;
    const acc = variants.map(() => ({
      wire: new Samples(size),
      read: new Samples(size),
      sdk: new Samples(size),
      shared: { n: 0 },
      cpuUs: 0,
      chunks: 0,
      blocks: [] as Array<[number, number]>,
    }));
    log(`E. per chunk: ${s.perChunk.warmup} warm-up streams per variant`);
    await rounds(variants, s.perChunk.warmup, s.perChunk.block, s.chunks, () => undefined);
    log(
      `E. per chunk: ${s.perChunk.streams} streams of ${s.chunks} chunks per variant, ${s.delayMs} ms between events`,
    );
    const profile = await profiling(s.profileDir);
    const gc = new GcPauses();
    await rounds(variants, s.perChunk.streams, s.perChunk.block, s.chunks, (_, i) => ({
      rec: { wire: acc[i]!.wire, read: acc[i]!.read, sdk: acc[i]!.sdk, shared: acc[i]!.shared },
      cpu: (cpuUs, calls) => {
        acc[i]!.cpuUs += cpuUs;
        acc[i]!.chunks += calls * s.chunks;
      },
      blocks: acc[i]!.blocks,
    }));
    gc.stop();
    await profile?.(
      'chunks',
      `${s.perChunk.streams * variants.length * s.chunks} chunks (${s.perChunk.streams * variants.length} calls)`,
    );
    return variants.map((v, i) => ({
      name: v.name,
      endpoint: v.endpoint,
      kind: v.kind,
      chunks: acc[i]!.chunks,
      wire: summarize(acc[i]!.wire.values()),
      readToConsumer: summarize(acc[i]!.read.values()),
      sdkToConsumer: summarize(acc[i]!.sdk.values()),
      sharedReads: acc[i]!.shared.n,
      cpuPerChunkMs: acc[i]!.cpuUs / 1000 / acc[i]!.chunks,
      gc: gc.within(acc[i]!.blocks, acc[i]!.chunks / s.chunks, 100),
    }));
  } finally {
    for (const app of apps.reverse()) await app.close();
  }
}

/** Runs section E: the upstream child, time to first chunk, then per-chunk latency. */
export async function runStreaming(s: StreamingSettings): Promise<StreamingResult> {
  patchSdkStream();
  const upstream = await StreamUpstream.start(s.chunks, s.delayMs);
  try {
    const ttfb = await ttfbPart(upstream.ttfbURL, s);
    const perChunk = await perChunkPart(upstream.chunksURL, s);
    return { settings: s, ttfb, perChunk };
  } finally {
    await upstream.stop();
  }
}

/** The baseline of a row: the plain SDK client's row of its endpoint. */
const baseOf = <T extends { endpoint: Endpoint; kind: Kind }>(rows: T[], r: T): T =>
  rows.find((x) => x.endpoint === r.endpoint && x.kind === 'raw') ?? r;

/** The targets of the performance issue: added TTFB p99 ≤ 0.3 ms, added per-chunk p99 ≤ 10 µs. */
export const TARGETS = { ttfbP99Ms: 0.3, chunkP99Ms: 0.01 };

const pauses = (p: Pauses) => `${p.n.toFixed(1)} / ${p.ms.toFixed(1)}`;

function ttfbTable(rows: TtfbResult[]): string {
  return table(
    [
      'variant',
      'calls',
      'p50 µs',
      'p99 µs',
      'mean µs',
      'added p50 µs',
      'added p99 µs',
      'added mean µs',
      'less upstream time p50 / p99 µs',
      'added p50 / p99 µs (less upstream time)',
      'CPU µs/call',
      'added CPU µs/call',
      'GC pauses / ms per 100 calls',
    ],
    rows.map((r) => {
      const b = baseOf(rows, r);
      const isBase = b === r;
      const d = (x: number, y: number) => (isBase ? '—' : us(x - y, true));
      return [
        r.name,
        r.summary.n,
        us(r.summary.p50),
        us(r.summary.p99),
        us(r.summary.mean),
        d(r.summary.p50, b.summary.p50),
        d(r.summary.p99, b.summary.p99),
        d(r.summary.mean, b.summary.mean),
        `${us(r.clientSide.p50)} / ${us(r.clientSide.p99)}`,
        isBase ? '—' : `${d(r.clientSide.p50, b.clientSide.p50)} / ${d(r.clientSide.p99, b.clientSide.p99)}`,
        us(r.cpuPerCallMs),
        d(r.cpuPerCallMs, b.cpuPerCallMs),
        pauses(r.gc),
      ];
    }),
  );
}

function chunkTable(rows: ChunkResult[]): string {
  return table(
    [
      'variant',
      'chunks',
      'write → consumer p50 / p99 µs',
      'added (write →)',
      'socket read → consumer p50 / p99 µs',
      'added (read →)',
      'SDK yield → consumer p50 / p99 µs',
      'added (SDK yield →)',
      'CPU µs/chunk',
      'added CPU µs/chunk',
      'GC pauses / ms per 100 streams',
      'chunks sharing a read',
    ],
    rows.map((r) => {
      const b = baseOf(rows, r);
      const isBase = b === r;
      const pair = (x: Summary) => `${us(x.p50)} / ${us(x.p99)}`;
      const added = (x: Summary, y: Summary) =>
        isBase ? '—' : `${us(x.p50 - y.p50, true)} / ${us(x.p99 - y.p99, true)}`;
      return [
        r.name,
        r.chunks,
        pair(r.wire),
        added(r.wire, b.wire),
        pair(r.readToConsumer),
        added(r.readToConsumer, b.readToConsumer),
        pair(r.sdkToConsumer),
        added(r.sdkToConsumer, b.sdkToConsumer),
        us(r.cpuPerChunkMs),
        isBase ? '—' : us(r.cpuPerChunkMs - b.cpuPerChunkMs, true),
        pauses(r.gc),
        r.sharedReads,
      ];
    }),
  );
}

/** The library's variants against the targets. */
function verdicts(r: StreamingResult): string[] {
  const mark = (ok: boolean) => (ok ? 'met' : '**not met**');
  const lines: string[] = [];
  for (const t of r.ttfb.filter((x) => x.kind === 'library')) {
    const b = baseOf(r.ttfb, t);
    const c = r.perChunk.find((x) => x.name === t.name)!;
    const cb = baseOf(r.perChunk, c);
    if (b === t) continue; // run without its baseline (--only)
    const ttfb = t.summary.p99 - b.summary.p99;
    const ttfbClient = t.clientSide.p99 - b.clientSide.p99;
    const read = c.readToConsumer.p99 - cb.readToConsumer.p99;
    const wire = c.wire.p99 - cb.wire.p99;
    lines.push(
      `- ${t.name}: added time to first chunk p99 ${us(ttfb, true)} µs (${mark(ttfb <= TARGETS.ttfbP99Ms)}), less the upstream's time ${us(ttfbClient, true)} µs (${mark(ttfbClient <= TARGETS.ttfbP99Ms)}); added per-chunk p99 ${us(read, true)} µs socket read → consumer (${mark(read <= TARGETS.chunkP99Ms)}); write → consumer ${us(wire, true)} µs`,
    );
  }
  return lines;
}

/** Section E as markdown. */
export function streamingReport(r: StreamingResult): string {
  const s = r.settings;
  return [
    `## E. Streaming (fake upstream in a child process; ${s.chunks} content chunks per stream; sequential calls in rotating blocks)`,
    '',
    `Targets: added time to first chunk p99 ≤ ${TARGETS.ttfbP99Ms * 1000} µs, added per-chunk p99 ≤ ${TARGETS.chunkP99Ms * 1000} µs. Each library row is compared with the plain SDK client's row of its endpoint. The per-chunk verdict uses socket read → consumer (all of this process's work on the chunk; the kernel and the wake-up, which the library does not touch, left out).`,
    '',
    ...verdicts(r),
    '',
    `### Time to first content chunk (streams sent with no delay; ${s.ttfb.warmup} warm-up + ${s.ttfb.calls} calls per variant in blocks of ${s.ttfb.block})`,
    '',
    'From before `stream()` / `create()` to the consumer’s first chunk with text; every stream is then read to its end (and the library’s `finished` awaited) outside the timing. "less upstream time": the same less, per call, the upstream’s own time from its request’s arrival to that chunk’s write (both stamped by the upstream process), so the fake server’s work and its pauses (which land on whichever variant runs) drop out. CPU per call: the whole stream. GC: the pauses of this process (`gc` performance entries) that began during the variant’s blocks, and their total duration.',
    '',
    ttfbTable(r.ttfb),
    '',
    `### Per-chunk latency (${s.delayMs} ms between SSE events; ${s.perChunk.warmup} warm-up + ${s.perChunk.streams} streams per variant in blocks of ${s.perChunk.block})`,
    '',
    'Per content chunk, to the consumer receiving it, from: "write", the upstream’s `process.hrtime.bigint()` when it wrote the chunk to its socket (CLOCK_MONOTONIC is shared by the processes; kernel and wake-up included); "socket read", when fetch read the data that held the chunk from the socket in this process; "SDK yield", when the SDK’s stream iterator yielded the chunk object (what the library’s iterator adds alone). "added": against the plain SDK client of the endpoint. CPU per chunk: this process’s CPU over the streams divided by their content chunks (the per-call work and the other events included). GC: as above, per 100 streams. "chunks sharing a read": chunks that arrived in the same socket read as the one before (the delay should make it 0).',
    '',
    chunkTable(r.perChunk),
    '',
  ].join('\n');
}
