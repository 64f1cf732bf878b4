import type { ServerResponse } from 'node:http';

/** The Node response under an Express response or a Fastify reply. */
export function rawResponse(res: unknown): ServerResponse {
  const r = res as { raw?: ServerResponse };
  return (r.raw && typeof r.raw.setHeader === 'function' ? r.raw : res) as ServerResponse;
}

/** Sets a response header on an Express response or a Fastify reply. */
export function setResponseHeader(res: unknown, name: string, value: string | number): void {
  const r = res as {
    header?: (n: string, v: string) => unknown;
    setHeader?: (n: string, v: string) => unknown;
  };
  if (typeof r.header === 'function') r.header(name, String(value));
  else r.setHeader?.(name, String(value));
}

/**
 * An AbortSignal that aborts when the client goes away before the response is finished, so an upstream
 * call made for it can be cancelled. Pass an Express response or a Fastify reply.
 */
export function clientAbortSignal(res: unknown): AbortSignal {
  const raw = rawResponse(res);
  const controller = new AbortController();
  const onClose = () => {
    if (!raw.writableFinished) controller.abort(new Error('client disconnected'));
  };
  raw.once('close', onClose);
  return controller.signal;
}
