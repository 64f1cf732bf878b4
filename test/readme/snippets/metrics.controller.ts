import { Controller, Get, Header } from '@nestjs/common';
import { OpenAIMetricsService } from 'nestjs-openai-production';

@Controller('metrics')
export class MetricsController {
  constructor(private readonly metrics: OpenAIMetricsService) {}

  @Get()
  @Header('content-type', 'text/plain; version=0.0.4; charset=utf-8')
  scrape(): Promise<string> {
    return this.metrics.metrics();
  }
}
