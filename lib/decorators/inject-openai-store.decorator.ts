import { Inject } from '@nestjs/common';
import { OPENAI_STORE } from '../openai.constants.js';

/**
 * Injects the shared store (`OpenAIStore`: memory, or Redis behind the failure policy).
 * @example constructor(@InjectOpenAIStore() private readonly store: OpenAIStore) {}
 */
export const InjectOpenAIStore = (): ParameterDecorator => Inject(OPENAI_STORE);
