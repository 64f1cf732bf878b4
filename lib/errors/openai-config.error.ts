import { OpenAIProductionError } from './openai-production.error.js';

/** One invalid option: where it is, what is wrong, how to fix it. */
export interface ConfigProblem {
  /** Option path, e.g. `timeouts.attemptMs` or `profiles.production.models.default`. */
  path: string;
  message: string;
  fix: string;
}

/** Thrown at boot when the module options are invalid. Lists every problem at once. */
export class OpenAIConfigError extends OpenAIProductionError {
  constructor(
    readonly environment: string,
    readonly problems: ConfigProblem[],
  ) {
    super(
      `Invalid OpenAIModule options (environment "${environment}"), ${problems.length} problem(s):\n` +
        problems.map((p) => `  - ${p.path}: ${p.message}. Fix: ${p.fix}`).join('\n'),
    );
  }
}
