import { Logger } from '@nestjs/common';
import { ModelNotAllowedException } from '../errors/openai-http.exceptions.js';
import type { ResolvedOpenAIOptions } from '../options/openai-module-options.interface.js';
import { isPinnedModel } from './model-names.js';

/** Resolves aliases and applies the allow-list and pinning rules to a requested chat model. */
export class ModelPolicy {
  /** Models already checked to be pinned snapshots. */
  private readonly pinned = new Set<string>();
  private readonly logger = new Logger('OpenAIModelPolicy');
  private readonly warned = new Set<string>();
  private readonly allow?: ReadonlySet<string>;
  private readonly configured: ReadonlySet<string>;

  constructor(private readonly options: ResolvedOpenAIOptions['models']) {
    this.allow = options.allow ? new Set(options.allow) : undefined;
    const target = (m: string) => options.aliases[m] ?? m;
    this.configured = new Set([
      target(options.default),
      ...Object.values(options.aliases),
      ...options.fallbacks.map(target),
    ]);
  }

  /**
   * The model to send upstream for a call that asked for `requested` (or for none).
   * @throws ModelNotAllowedException (400) when the model is outside the allow-list (or, without one and with
   *   `requested: 'configured'`, outside the configured models), or unpinned while pinning is enforced.
   */
  resolve(requested?: string): string {
    const name = requested ?? this.options.default;
    const model = this.options.aliases[name] ?? name;
    if (this.allow && !this.allow.has(model)) {
      throw new ModelNotAllowedException(`Model "${name}" is not allowed here`);
    }
    // Without an allow-list, `requested: 'configured'` keeps callers (often end users naming a model in
    // a request body) to the models the app configured: no picking the dearest model on someone else's bill.
    if (
      !this.allow &&
      requested !== undefined &&
      this.options.requested === 'configured' &&
      !this.configured.has(model)
    ) {
      throw new ModelNotAllowedException(`Model "${name}" is not one of the configured models`);
    }
    if (this.options.pinning !== 'off' && !this.pinned.has(model) && !this.checkPinned(model)) {
      if (this.options.pinning === 'enforce') {
        throw new ModelNotAllowedException(
          `Model "${name}" is not a pinned snapshot; use a dated model version`,
        );
      }
      if (!this.warned.has(model) && this.warned.size < 1000) {
        this.warned.add(model);
        this.logger.warn(
          `Model "${model}" is not a pinned snapshot: its behaviour can change without notice`,
        );
      }
    }
    return model;
  }

  /** Whether `model` is a pinned snapshot, remembered for the pinned ones (bounded). */
  private checkPinned(model: string): boolean {
    if (!isPinnedModel(model)) return false;
    if (this.pinned.size < 1_000) this.pinned.add(model);
    return true;
  }

  /**
   * Fallback models (already resolved) to try after `model`, excluding it. The configured ones were
   * checked at boot; a per-call list goes through the same rules as a requested model.
   * @throws ModelNotAllowedException (400) when a per-call fallback is not allowed.
   */
  fallbacksFor(model: string, override?: string[] | false): string[] {
    if (override === false) return [];
    const list = override
      ? override.map((f) => this.resolve(f))
      : this.options.fallbacks.map((f) => this.options.aliases[f] ?? f);
    return list.filter((f, i) => f !== model && list.indexOf(f) === i);
  }
}
