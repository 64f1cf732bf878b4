import { Inject } from '@nestjs/common';
import { OPENAI_CLIENT } from '../openai.constants.js';

/**
 * Injects the configured raw `OpenAI` client (keys, base URL, org/project headers, SDK retries off).
 * @example constructor(@InjectOpenAI() private readonly client: OpenAI) {}
 */
export const InjectOpenAI = (): ParameterDecorator => Inject(OPENAI_CLIENT);
