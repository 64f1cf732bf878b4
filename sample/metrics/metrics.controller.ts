import { Controller, Get, Header } from '@nestjs/common';
import { OpenAIMetricsService } from '../../lib/index.js';
import { Public } from '../auth/public.decorator.js';

@Controller('metrics')
export class MetricsController {
  constructor(private readonly metrics: OpenAIMetricsService) {}

  /** Prometheus text exposition. Keep it off the public internet (bind it to an internal port or protect it). */
  @Public()
  @Get()
  @Header('content-type', 'text/plain; version=0.0.4; charset=utf-8')
  scrape(): Promise<string> {
    return this.metrics.metrics();
  }
}
