import { DEFAULT_FAKE_MODELS } from '../fake-openai.options.js';
import { HttpError, type RouteContext } from './route-helpers.js';

function modelObject(id: string): object {
  return {
    id,
    object: 'model',
    created: 1_700_000_000,
    owned_by: id.startsWith('omni-moderation') ? 'openai' : 'system',
  };
}

/** `GET /v1/models`. */
export function listModelsRoute(ctx: RouteContext): void {
  const ids = ctx.options.models ?? DEFAULT_FAKE_MODELS;
  ctx.ok({ object: 'list', data: ids.map(modelObject) });
}

/** `GET /v1/models/:id`. */
export function retrieveModelRoute(ctx: RouteContext, id: string): void {
  const ids = ctx.options.models ?? DEFAULT_FAKE_MODELS;
  if (!ids.includes(id)) {
    throw new HttpError(
      404,
      `The model '${id}' does not exist`,
      'invalid_request_error',
      'model',
      'model_not_found',
    );
  }
  ctx.ok(modelObject(id));
}
