/**
 * Base class of the library's internal (non-HTTP) errors. Messages say how to fix the problem;
 * the underlying error, when there is one, is kept as `cause`.
 */
export class OpenAIProductionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}
