import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { FakeOpenAIServer } from 'nestjs-openai-production/testing';
import { AppModule } from './app.module.js';

async function main(): Promise<void> {
  const fake = await FakeOpenAIServer.start();
  const app = await NestFactory.create(AppModule.register(fake.baseURL));
  await app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1');
  console.log(
    `packaging app listening on http://127.0.0.1:${process.env.PORT ?? 3000} (fake upstream ${fake.baseURL})`,
  );

  const stop = async (): Promise<void> => {
    await app.close();
    await fake.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop());
  process.once('SIGINT', () => void stop());
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
