import { Module, type DynamicModule } from '@nestjs/common';
import { OpenAIModule } from 'nestjs-openai-production';
import { ChatController } from './chat.controller.js';

@Module({})
export class AppModule {
  static register(baseURL: string): DynamicModule {
    return {
      module: AppModule,
      imports: [
        OpenAIModule.forRoot({
          apiKey: 'sk-packaging-test-key-000000000000',
          baseURL,
          environment: 'production',
          models: { default: 'gpt-4o-mini-2024-07-18' },
        }),
      ],
      controllers: [ChatController],
    };
  }
}
