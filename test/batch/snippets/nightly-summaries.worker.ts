import { Injectable, Logger } from '@nestjs/common';
import { OpenAIBatchService, type BatchRequest } from 'nestjs-openai-production';

/** Summaries that can wait: one Batch API call at half the price, results back by custom_id. */
@Injectable()
export class NightlySummaries {
  private readonly logger = new Logger(NightlySummaries.name);

  constructor(private readonly batches: OpenAIBatchService) {}

  async run(userId: string, docs: Map<string, string>): Promise<Map<string, string>> {
    const requests: Array<BatchRequest<'responses'>> = [...docs].map(([id, text]) => ({
      customId: id,
      body: { input: `Summarize:\n${text}`, max_output_tokens: 200 },
    }));
    // Reserves the batch's highest cost (batch price) against the user's budget, uploads, polls with backoff.
    const result = await this.batches.run('responses', requests, {
      user: userId,
      route: 'worker:nightly-summaries',
      pollIntervalMs: 30_000,
      deadlineMs: 6 * 3_600_000,
    });
    const out = new Map<string, string>();
    for (const o of result.outcomes) {
      if (o.status === 'succeeded') out.set(o.customId, o.text);
      else if (o.status === 'failed') this.logger.warn(`${o.customId} failed: ${o.error.code}`);
    }
    return out;
  }
}
