import { SetMetadata } from '@nestjs/common';
import type { ModerationCheckOptions } from '../call/upstream-call.js';

export const MODERATION_METADATA = 'OPENAI:MODERATION';

/** Per-route moderation settings, read by `ModerationPipe` and by `OpenAIService` for output moderation. */
export interface ModerateOptions extends ModerationCheckOptions {
  /** Roles of the messages to moderate. @default the module's `moderation.roles` (['user']) */
  roles?: Array<'user' | 'system' | 'developer' | 'assistant'>;
  /** Body fields (dotted paths) to moderate instead of messages. */
  fields?: string[];
  /** Moderate input with `ModerationPipe`. @default true */
  input?: boolean;
  /** Moderate the completion before returning it. `true`, or options for the output check only. @default false */
  output?: boolean | ModerationCheckOptions;
}

/**
 * Moderation settings of a route or a controller.
 * @example
 * @Moderate({ categories: ['violence', 'self-harm'], thresholds: { violence: 0.4 }, output: true })
 * @Post('chat') chat(@Body(ChatRequestPipe, ModerationPipe) body: ChatRequestBody) {}
 */
export const Moderate = (options: ModerateOptions = {}): MethodDecorator & ClassDecorator =>
  SetMetadata(MODERATION_METADATA, options);
