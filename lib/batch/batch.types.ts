import type OpenAI from 'openai';
import type { NormalizedUsage } from '../call/upstream-call.js';
import type { ChatRequest, ResponseRequest } from '../openai.service.js';

/** The endpoints a batch can run, with what one request sends and what one result is. */
export interface BatchEndpoints {
  /** `POST /v1/chat/completions` */
  'chat.completions': { request: ChatRequest; response: OpenAI.Chat.Completions.ChatCompletion };
  /** `POST /v1/responses` */
  responses: { request: ResponseRequest; response: OpenAI.Responses.Response };
}

/** `'chat.completions'` or `'responses'`. */
export type BatchEndpoint = keyof BatchEndpoints;

/** The SDK's batch object (`client.batches.retrieve()`). */
export type OpenAIBatch = OpenAI.Batches.Batch;

/** One request of a batch: its `custom_id` (unique in the batch) and its body, as for a normal call. */
export interface BatchRequest<E extends BatchEndpoint = BatchEndpoint> {
  customId: string;
  body: BatchEndpoints[E]['request'];
}

/** Options of `submit()` (and `run()`). */
export interface BatchSubmitOptions {
  /** End user the batch is made for (budgets, the ledger, `safety_identifier`); defaults to the request context's. */
  user?: string;
  /** Route label of the batch's usage in the ledger. @default 'batch' */
  route?: string;
  /** The batch's `metadata` upstream (at most 16 keys; values up to 512 characters). */
  metadata?: Record<string, string>;
  /** Cancels the upload and the batch creation (the budget hold is then released). */
  signal?: AbortSignal;
}

/** Options of `wait()` (and `run()`): polling with exponential backoff until a terminal status. */
export interface BatchWaitOptions {
  /**
   * Give up waiting after this long (ms): a 504 `upstream_timeout`. The batch keeps running upstream and its budget
   * hold stays: `collect()` it later, or `cancel()` it. @default 90000000 (25 hours: the 24h window and some)
   */
  deadlineMs?: number;
  /** Stop waiting (a 499 `client_closed_request`); as for the deadline, the batch keeps running. */
  signal?: AbortSignal;
  /** First wait between two polls (ms). @default 1000 */
  pollIntervalMs?: number;
  /** Longest wait between two polls (ms). @default 60000 */
  maxPollIntervalMs?: number;
  /** Each wait is the previous one times this. @default 2 */
  backoffFactor?: number;
}

/** Options of `collect()`. */
export interface BatchCollectOptions {
  /**
   * The user and route to record usage for when the batch was submitted by another process (this one knows only the
   * batches it submitted). @default the submitting call's, else none and `'batch'`
   */
  user?: string;
  route?: string;
  signal?: AbortSignal;
}

/** A batch once submitted: keep `id` to `wait()`, `collect()`, `cancel()` or `retrieve()` it, here or elsewhere. */
export interface SubmittedBatch {
  id: string;
  endpoint: BatchEndpoint;
  inputFileId: string;
  requestCount: number;
  /** The highest cost of the batch at the batch price (reserved against budgets); `null` when a model has no price. */
  maxCostUsd: number | null;
  /** The SDK's batch object, as `batches.create` returned it. */
  batch: OpenAIBatch;
}

/** Why a request of a batch failed: from its line in the error file. */
export interface BatchRequestError {
  /** The upstream's error code (e.g. `server_error`, `batch_expired`), or `null`. */
  code: string | null;
  /** The upstream's message (it may quote the request: do not show it to end users as is). */
  message: string;
  /** HTTP status of the request's response, when it had one. */
  statusCode?: number;
}

/** What became of one request of a batch: exactly one per request. */
export type BatchOutcome<E extends BatchEndpoint = BatchEndpoint> =
  | {
      customId: string;
      status: 'succeeded';
      /** The SDK-shaped reply (a chat completion or a response). */
      response: BatchEndpoints[E]['response'];
      /** Its text (every choice's content for chat; `output_text` parts for responses). */
      text: string;
      /** Model that answered. */
      model: string;
      usage: NormalizedUsage;
      /** Cost at the batch price (USD); `null` when the model has no batch price. */
      costUsd: number | null;
      openaiRequestId?: string;
    }
  | { customId: string; status: 'failed'; error: BatchRequestError; openaiRequestId?: string }
  /** In neither file (the batch failed, was cancelled before running it, or the upstream lost it). */
  | { customId: string; status: 'missing' };

/** A finished batch, its requests matched to their results by `custom_id`. */
export interface BatchResult<E extends BatchEndpoint = BatchEndpoint> {
  id: string;
  endpoint: E;
  /** Terminal status: `completed`, `failed`, `expired` or `cancelled`. */
  status: OpenAIBatch['status'];
  batch: OpenAIBatch;
  /** One per request, in the order of the requests. */
  outcomes: Array<BatchOutcome<E>>;
  /** The same outcomes by `custom_id`. */
  byCustomId: Map<string, BatchOutcome<E>>;
  counts: { succeeded: number; failed: number; missing: number };
  /** Usage of the succeeded requests (failed ones are not billed). */
  usage: NormalizedUsage;
  /** Their cost at the batch price (USD); `null` when one had no price. */
  costUsd: number | null;
  /** `custom_id`s found in the files that no request of the batch had (ignored). */
  unexpected: string[];
  /**
   * `true` when this call recorded the batch's usage (ledger, budget settlement); `false` when it had been recorded
   * before (the batch was collected already, here or on another instance sharing the store).
   */
  accounted: boolean;
}
