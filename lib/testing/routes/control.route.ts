import type { IncomingMessage, ServerResponse } from 'node:http';
import { isRecord } from '../../utils/is-record.js';
import type { FaultRule, RecordedRequest } from '../fake-openai.options.js';

/** What the control API drives: the server's own public methods. */
export interface ControlTarget {
  readonly requests: RecordedRequest[];
  fault(rule: FaultRule): unknown;
  clearFaults(): unknown;
  reset(): unknown;
  setApiKeys(keys: string[] | undefined): unknown;
}

function send(res: ServerResponse, status: number, payload: unknown): void {
  const json = JSON.stringify(payload);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(json)),
  });
  res.end(json);
}

function fail(res: ServerResponse, status: number, message: string): void {
  send(res, status, { error: { message, type: 'invalid_request_error', param: null, code: null } });
}

/** A fault rule as JSON carries `times: null` for "no limit" (JSON has no Infinity). */
function toRule(body: Record<string, unknown>): FaultRule {
  const rule = { ...body } as FaultRule & { times?: number | null };
  if (rule.times === null) delete rule.times;
  return rule;
}

/**
 * The HTTP control API under `/_control/` (see {@link FakeOpenAIServerOptions.controlApi}): `POST /_control/faults`,
 * `DELETE /_control/faults`, `GET /_control/requests`, `POST /_control/reset`, `PUT /_control/api-keys`.
 */
export function controlRoute(
  target: ControlTarget,
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  body: unknown,
  jsonError: boolean,
): void {
  const method = (req.method ?? 'GET').toUpperCase();
  if (jsonError) return fail(res, 400, 'The body is not valid JSON.');
  try {
    if (path === '/_control/faults' && method === 'POST') {
      if (!isRecord(body)) return fail(res, 400, 'Send one fault rule as a JSON object.');
      target.fault(toRule(body));
      return send(res, 201, { ok: true });
    }
    if (path === '/_control/faults' && method === 'DELETE') {
      target.clearFaults();
      return send(res, 200, { ok: true });
    }
    if (path === '/_control/requests' && method === 'GET') {
      return send(res, 200, target.requests);
    }
    if (path === '/_control/reset' && method === 'POST') {
      target.reset();
      return send(res, 200, { ok: true });
    }
    if (path === '/_control/api-keys' && method === 'PUT') {
      const keys = isRecord(body) ? body.keys : body;
      if (
        keys !== null &&
        keys !== undefined &&
        !(Array.isArray(keys) && keys.every((k) => typeof k === 'string'))
      ) {
        return fail(res, 400, 'Send { "keys": ["key", ...] } or { "keys": null } to accept any key.');
      }
      target.setApiKeys(keys ?? undefined);
      return send(res, 200, { ok: true });
    }
  } catch (err) {
    return fail(res, 400, err instanceof Error ? err.message : String(err));
  }
  return fail(res, 404, `No control route ${method} ${path}.`);
}
