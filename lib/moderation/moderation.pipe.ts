import { Inject, Injectable, Optional, type ArgumentMetadata, type PipeTransform } from '@nestjs/common';
import { RefusalRecorder } from '../call/refusal.recorder.js';
import { Reflector } from '@nestjs/core';
import { RequestContextStore } from '../request-context/request-context.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { OPENAI_RESOLVED_OPTIONS } from '../openai.constants.js';
import { extractTexts } from './extract-texts.js';
import { MODERATION_METADATA, type ModerateOptions } from './moderate.decorator.js';
import { ContentFlaggedException } from './moderation.exceptions.js';
import { ModerationService } from './moderation.service.js';

/**
 * Moderates the user-provided text of a body before the handler runs: by default the content of `user`
 * messages (text parts included), all in one moderations call. Flagged: 422 with the category names.
 * Per-route settings come from `@Moderate({...})` on the handler or controller. Use it by class so
 * Nest injects it, after the validation pipe:
 *
 * @example @Post() chat(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {}
 * @throws ContentFlaggedException (422), ModerationUnavailableException (503, when failing closed)
 */
@Injectable()
export class ModerationPipe implements PipeTransform {
  constructor(
    private readonly moderation: ModerationService,
    private readonly reflector: Reflector,
    @Inject(OPENAI_RESOLVED_OPTIONS) private readonly options: ResolvedOpenAIOptions,
    @Optional() private readonly refusals?: RefusalRecorder,
  ) {}

  async transform(value: unknown, metadata: ArgumentMetadata): Promise<unknown> {
    if (metadata.type !== 'body' || !this.options.moderation.enabled) return value;
    const ctx = RequestContextStore.get();
    const targets = [ctx?.handler, ctx?.controller].filter((t): t is Function => t !== undefined);
    const route = targets.length
      ? this.reflector.getAllAndOverride<ModerateOptions | undefined>(MODERATION_METADATA, targets)
      : undefined;
    if (route?.input === false) return value;
    const texts = extractTexts(value, {
      roles: route?.roles ?? this.options.moderation.roles,
      fields: route?.fields ?? this.options.moderation.fields,
    });
    try {
      const verdict = await this.moderation.check(texts, 'input', {
        categories: route?.categories,
        thresholds: route?.thresholds,
        onError: route?.onError,
      });
      if (verdict.flagged) throw new ContentFlaggedException(verdict.categories, 'input');
    } catch (err) {
      throw this.refusals ? this.refusals.record(err) : err;
    }
    return value;
  }
}
