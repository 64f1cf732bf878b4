import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import OpenAI, { AuthenticationError, InternalServerError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The compiled command-line fake, spawned as users run it, driven over HTTP with fetch and the SDK.

const ROOT = resolve(__dirname, '../..');
const run = promisify(execFile);

interface Cli {
  child: ChildProcess;
  baseURL: string;
  control: string;
  exited: Promise<number | null>;
  stderr: () => string;
}

describe('nestjs-openai-production-fake (CLI)', () => {
  let outDir: string;
  let cliPath: string;

  beforeAll(async () => {
    outDir = mkdtempSync(join(tmpdir(), 'fake-cli-'));
    // Only the CLI and what it imports, with the build settings of the published package.
    const tsconfig = join(outDir, 'tsconfig.json');
    writeFileSync(
      tsconfig,
      JSON.stringify({
        extends: join(ROOT, 'tsconfig.build.json'),
        compilerOptions: {
          outDir: join(outDir, 'dist'),
          rootDir: join(ROOT, 'lib'),
          typeRoots: [join(ROOT, 'node_modules/@types')],
          declaration: false,
        },
        files: [join(ROOT, 'lib/testing/cli.ts')],
        include: [],
      }),
    );
    await run(join(ROOT, 'node_modules/.bin/tsc'), ['-p', tsconfig], { cwd: ROOT });
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      bin: Record<string, string>;
    };
    // package.json's bin points into dist/, which this build mirrors
    cliPath = join(outDir, pkg.bin['nestjs-openai-production-fake']!);
  }, 120_000);

  afterAll(() => {
    rmSync(outDir, { recursive: true, force: true });
  });

  function start(args: string[]): Promise<Cli> {
    // The build lives outside the repo: its imports (gpt-tokenizer) resolve through NODE_PATH.
    const child = spawn(process.execPath, [cliPath, ...args], {
      env: { ...process.env, NODE_PATH: join(ROOT, 'node_modules') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    return new Promise((resolveStart, reject) => {
      const timer = setTimeout(() => reject(new Error(`CLI did not start: ${stderr}`)), 15_000);
      child.stdout!.on('data', (d: Buffer) => {
        stdout += d.toString();
        const line = stdout.split('\n')[0];
        if (stdout.includes('\n') && line) {
          clearTimeout(timer);
          resolveStart({
            child,
            baseURL: line,
            control: line.replace(/\/v1$/, '/_control'),
            exited,
            stderr: () => stderr,
          });
        }
      });
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`CLI exited with ${code}: ${stderr}`));
      });
    });
  }

  it("package.json's bin names the compiled CLI, which starts with a node shebang", () => {
    expect(existsSync(cliPath)).toBe(true);
    expect(readFileSync(cliPath, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
  });

  it('prints its base URL, serves the SDK, is driven by the control API, and stops on SIGTERM', async () => {
    const cli = await start(['--port', '0', '--host', '127.0.0.1']);
    try {
      expect(cli.baseURL).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
      const client = new OpenAI({ apiKey: 'sk-cli', baseURL: cli.baseURL, maxRetries: 0 });

      const ok = await client.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'hi' }],
      });
      expect(ok.choices[0]!.message.content).toBe('Echo: hi');
      expect((await client.responses.create({ model: 'gpt-4o-mini', input: 'yo' })).output_text).toBe(
        'Echo: yo',
      );

      // a fault from JSON
      const added = await fetch(`${cli.control}/faults`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ path: '/v1/chat/completions', status: 503, retryAfter: 1, times: 1 }),
      });
      expect(added.status).toBe(201);
      const err = await client.chat.completions
        .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InternalServerError);
      expect((err as InternalServerError).status).toBe(503);
      expect((err as InternalServerError).headers!.get('retry-after')).toBe('1');

      // an invalid rule is a 400 from the control API
      const bad = await fetch(`${cli.control}/faults`, {
        method: 'POST',
        body: JSON.stringify({ status: 42 }),
      });
      expect(bad.status).toBe(400);

      // the recorded requests, control calls excluded
      const requests = (await (await fetch(`${cli.control}/requests`)).json()) as Array<{
        path: string;
        fault?: { status: number };
        headers: Record<string, string>;
      }>;
      expect(requests.map((r) => r.path)).toEqual([
        '/v1/chat/completions',
        '/v1/responses',
        '/v1/chat/completions',
      ]);
      expect(requests[2]!.fault).toMatchObject({ status: 503 });
      expect(requests[0]!.headers.authorization).toBe('Bearer sk-cli');

      // faults added and cleared
      await fetch(`${cli.control}/faults`, {
        method: 'POST',
        body: JSON.stringify({ status: 500, times: null }),
      });
      expect((await fetch(`${cli.control}/faults`, { method: 'DELETE' })).status).toBe(200);
      expect((await client.models.list()).data.length).toBeGreaterThan(0);

      // API keys
      const keys = await fetch(`${cli.control}/api-keys`, {
        method: 'PUT',
        body: JSON.stringify({ keys: ['sk-ok'] }),
      });
      expect(keys.status).toBe(200);
      expect(await client.models.list().catch((e: unknown) => e)).toBeInstanceOf(AuthenticationError);
      const allowed = new OpenAI({ apiKey: 'sk-ok', baseURL: cli.baseURL, maxRetries: 0 });
      expect((await allowed.models.list()).data.length).toBeGreaterThan(0);
      await fetch(`${cli.control}/api-keys`, { method: 'PUT', body: JSON.stringify({ keys: null }) });
      expect((await client.models.list()).data.length).toBeGreaterThan(0);

      // reset forgets requests
      expect((await fetch(`${cli.control}/reset`, { method: 'POST' })).status).toBe(200);
      expect(await (await fetch(`${cli.control}/requests`)).json()).toEqual([]);
      expect((await fetch(`${cli.control}/nope`)).status).toBe(404);
    } finally {
      cli.child.kill('SIGTERM');
    }
    expect(await cli.exited).toBe(0);
    expect(cli.stderr()).toContain('SIGTERM');
  }, 30_000);

  it('listens on the given port, takes --api-key, stops on SIGINT; the control API is off in the library', async () => {
    const probe = await start(['--port', '0']);
    expect(Number(new URL(probe.baseURL).port)).toBeGreaterThan(0);
    probe.child.kill('SIGINT');
    expect(await probe.exited).toBe(0);

    // A given port: one below the ephemeral range (a just-freed ephemeral port may be taken by a parallel
    // test meanwhile); retried on another if this one happens to be in use.
    let cli: Cli | undefined;
    let port = 0;
    for (let i = 0; i < 5 && !cli; i++) {
      port = 20_000 + Math.floor(Math.random() * 12_000);
      cli = await start(['--port', String(port), '--api-key', 'sk-a']).catch(() => undefined);
    }
    if (!cli) throw new Error('the CLI did not start on any of 5 ports');
    try {
      expect(cli.baseURL).toBe(`http://127.0.0.1:${port}/v1`);
      const wrong = new OpenAI({ apiKey: 'sk-b', baseURL: cli.baseURL, maxRetries: 0 });
      expect(await wrong.models.list().catch((e: unknown) => e)).toBeInstanceOf(AuthenticationError);
    } finally {
      cli.child.kill('SIGINT');
    }
    expect(await cli.exited).toBe(0);

    const { FakeOpenAIServer } = await import('./index.js');
    const server = await FakeOpenAIServer.start();
    try {
      const res = await fetch(`${server.baseURL.replace(/\/v1$/, '')}/_control/requests`);
      expect(res.status).toBe(404);
    } finally {
      await server.close();
    }
  }, 30_000);

  it('rejects a bad --port with exit code 2 and usage', async () => {
    const result = await run(process.execPath, [cliPath, '--port', 'abc'], {
      env: { ...process.env, NODE_PATH: join(ROOT, 'node_modules') },
    }).catch((e: { code: number; stderr: string }) => e);
    expect((result as { code: number }).code).toBe(2);
    expect((result as { stderr: string }).stderr).toContain('Usage: nestjs-openai-production-fake');
  });
});
