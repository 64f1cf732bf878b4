import { Controller, Get, ServiceUnavailableException } from '@nestjs/common';
import { OpenAIHealthService } from '../../lib/index.js';
import { Public } from '../auth/public.decorator.js';

@Controller('health')
export class HealthController {
  constructor(private readonly health: OpenAIHealthService) {}

  /** 200 while the app can serve; 503 when Redis (when configured) does not answer. */
  @Public()
  @Get()
  async check() {
    const h = await this.health.check();
    if (!h.up) throw new ServiceUnavailableException(`Shared store (${h.storage.kind}) unavailable`);
    return { status: 'ok', storage: h.storage.kind };
  }
}
