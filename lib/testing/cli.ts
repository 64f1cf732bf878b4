#!/usr/bin/env node
// The command-line fake: `nestjs-openai-production-fake --port 4010 [--host 127.0.0.1]` serves the fake OpenAI API
// with its HTTP control API, for test suites that are not written in Node.
import { parseArgs } from 'node:util';
import { FakeOpenAIServer } from './fake-openai.server.js';

const USAGE = `Usage: nestjs-openai-production-fake [--port 4010] [--host 127.0.0.1] [--api-key KEY]... [--strict-models]
                                     [--stream-chunk-delay-ms MS]

Serves a fake OpenAI API (chat completions, responses, moderations, embeddings, models) and prints its base URL
(the OpenAI SDK's baseURL / OPENAI_BASE_URL) on the first line of stdout. --port 0 picks a free port.

Control API on the same port (JSON):
  POST   /_control/faults      add a fault rule, e.g. {"path":"/v1/chat/completions","status":429,"times":1}
  DELETE /_control/faults      remove every fault rule
  GET    /_control/requests    the requests received so far
  POST   /_control/reset       forget requests and fault rules
  PUT    /_control/api-keys    {"keys":["sk-a"]} accepts only these keys; {"keys":null} accepts any

Stops on SIGINT or SIGTERM.`;

function fail(message: string): never {
  process.stderr.write(`${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function integer(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0)
    fail(`--${name} must be a non-negative integer, got ${JSON.stringify(value)}.`);
  return n;
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: 'string' },
        host: { type: 'string' },
        'api-key': { type: 'string', multiple: true },
        'strict-models': { type: 'boolean' },
        'stream-chunk-delay-ms': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    fail(err instanceof Error ? err.message : String(err));
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const port = integer('port', values.port, 4010);
  if (port > 65535) fail(`--port must be at most 65535, got ${port}.`);
  const server = await FakeOpenAIServer.start({
    port,
    host: values.host ?? '127.0.0.1',
    controlApi: true,
    strictModels: values['strict-models'] === true,
    streamChunkDelayMs: integer('stream-chunk-delay-ms', values['stream-chunk-delay-ms'], 0),
    ...(values['api-key'] ? { apiKeys: values['api-key'] } : {}),
  });
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`${signal}: stopping the fake OpenAI server\n`);
    void server.close().then(() => process.exit(0));
  };
  // Handlers first: a supervisor may send SIGINT as soon as it reads the base URL.
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  process.stdout.write(`${server.baseURL}\n`);
  process.stderr.write(
    `Fake OpenAI server listening; control API at ${server.baseURL.replace(/\/v1$/, '/_control/')}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(
    `Could not start the fake OpenAI server: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  process.exit(1);
});
