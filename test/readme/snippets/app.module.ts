import { Module } from '@nestjs/common';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { APP_FILTER } from '@nestjs/core';
import { OpenAIExceptionFilter, OpenAIModule } from 'nestjs-openai-production';
import { ChatController } from './chat.controller.js';

@Module({
  imports: [
    ConfigModule.forRoot({ isGlobal: true }),
    OpenAIModule.forRootAsync({
      isGlobal: true,
      inject: [ConfigService],
      useFactory: (config: ConfigService) => ({
        apiKey: config.getOrThrow<string>('OPENAI_API_KEY'),
        baseURL: config.get<string>('OPENAI_BASE_URL'),
        models: { default: 'chat', aliases: { chat: 'gpt-4o-mini-2024-07-18' } },
        limits: {
          requests: [{ name: 'minute', limit: 20, ttl: 60_000 }],
          tokens: [{ name: 'minute', limit: 40_000, ttl: 60_000 }],
        },
        budgets: { user: { dailyUsd: 1 }, project: { monthlyUsd: 500 } },
        profiles: {
          development: { logging: { prompts: true } },
          production: { storage: { type: 'redis', redis: { url: config.get<string>('REDIS_URL') } } },
        },
      }),
    }),
  ],
  controllers: [ChatController],
  providers: [{ provide: APP_FILTER, useClass: OpenAIExceptionFilter }],
})
export class AppModule {}
