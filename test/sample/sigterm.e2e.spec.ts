import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { freePort } from '../support/redis.js';

async function waitForHealth(base: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`the sample exited early with ${child.exitCode}`);
    try {
      if ((await fetch(`${base}/health`)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the sample did not answer /health');
}

// The real process, as `npm run sample` runs it: compiled, with its own signal handling.
describe('the sample process on SIGTERM', () => {
  let fake: FakeOpenAIServer;
  let child: ChildProcess;
  let base: string;
  let output = '';

  beforeAll(async () => {
    execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'sample/tsconfig.json'], {
      stdio: 'pipe',
    });
    fake = await FakeOpenAIServer.start();
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    child = spawn(process.execPath, ['sample/dist/sample/main.js'], {
      env: {
        ...process.env,
        PORT: String(port),
        HOST: '127.0.0.1',
        OPENAI_BASE_URL: fake.baseURL,
        OPENAI_API_KEY: 'sk-sigterm-test-0000000000000000',
        MODERATION: 'off',
        LOG_FORMAT: 'json',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await waitForHealth(base, child);
  }, 120_000);

  afterAll(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await fake.close();
  });

  it('finishes the request in flight, then exits 0', async () => {
    fake.fault({ path: '/v1/chat/completions', delayMs: 800, times: 1 });
    const inFlight = fetch(`${base}/chat`, {
      method: 'POST',
      headers: { authorization: 'Bearer alice-token', 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'drain me' }] }),
    });
    // SIGTERM once the upstream has the request, i.e. while it is in flight.
    for (let i = 0; i < 100 && fake.requestsTo('/v1/chat/completions').length === 0; i++)
      await new Promise((r) => setTimeout(r, 20));
    expect(fake.requestsTo('/v1/chat/completions')).toHaveLength(1);
    child.kill('SIGTERM');
    const res = await inFlight;
    expect(res.status).toBe(200);
    expect(((await res.json()) as { content: string }).content).toBe('Echo: drain me');
    const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
    expect({ code, signal }).toEqual({ code: 0, signal: null });
    expect(output).not.toContain('sk-sigterm-test');
  }, 30_000);
});
