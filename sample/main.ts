import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { FakeOpenAIServer } from '../lib/testing/index.js';
import { createSampleApp } from './bootstrap.js';
import { readSampleConfig } from './sample.config.js';

async function main() {
  const logger = new Logger('Sample');
  let fake: FakeOpenAIServer | undefined;
  let apiKey = process.env.OPENAI_API_KEY;
  let baseURL = process.env.OPENAI_BASE_URL;
  if (!apiKey && !baseURL) {
    fake = await FakeOpenAIServer.start();
    baseURL = fake.baseURL;
    apiKey = 'sk-fake-local-upstream-key-0000';
  } else if (!apiKey) {
    apiKey = 'sk-placeholder-for-compatible-server';
  }
  const config = readSampleConfig(process.env, { apiKey, baseURL });
  const app = await createSampleApp(config);
  if (fake)
    Logger.log(
      `No OPENAI_API_KEY or OPENAI_BASE_URL: using the embedded fake OpenAI server at ${fake.baseURL}`,
      'Sample',
    );
  await app.listen(config.port, config.host);
  logger.log(
    `Listening on http://${config.host}:${config.port} (${config.platform}, environment ${config.environment})`,
  );
  const stop = async () => {
    await app.close();
    await fake?.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop());
  process.once('SIGINT', () => void stop());
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
