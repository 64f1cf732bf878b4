import { HttpError, randomAlnum, type RouteContext } from './route-helpers.js';

// `POST /v1/files` (a multipart upload, as the SDK sends it) and `GET /v1/files/:id/content`: just enough of the
// Files API for the Batch API (input files in, output and error files out). Files are kept in memory, as text.

/** A file the fake holds: the `FileObject` fields, and its content. */
export interface FakeFile {
  id: string;
  object: 'file';
  bytes: number;
  created_at: number;
  filename: string;
  purpose: string;
  status: 'processed';
  /** The file's content (text: the fake serves JSONL files only). */
  content: string;
}

/** The files uploaded to the fake, and the output and error files its batches write. */
export class FakeFiles {
  private readonly files = new Map<string, FakeFile>();

  /** Stores a file and returns it. */
  add(filename: string, purpose: string, content: string): FakeFile {
    const file: FakeFile = {
      id: `file-${randomAlnum(22)}`,
      object: 'file',
      bytes: Buffer.byteLength(content),
      created_at: Math.floor(Date.now() / 1000),
      filename,
      purpose,
      status: 'processed',
      content,
    };
    this.files.set(file.id, file);
    return file;
  }

  get(id: string): FakeFile | undefined {
    return this.files.get(id);
  }

  /** Every file, in upload order. */
  list(): FakeFile[] {
    return [...this.files.values()];
  }

  clear(): void {
    this.files.clear();
  }
}

/** One part of a `multipart/form-data` body. */
interface FormPart {
  name: string;
  filename?: string;
  value: string;
}

/** Parses a `multipart/form-data` body (read as UTF-8 text) into its parts. */
export function parseMultipart(contentType: string | undefined, body: string): FormPart[] {
  const boundary = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(contentType ?? '');
  if (!boundary) throw new HttpError(400, 'Expected a multipart/form-data body with a boundary.');
  const delimiter = `--${boundary[1] ?? boundary[2]!.trim()}`;
  const parts: FormPart[] = [];
  for (const chunk of body.split(delimiter).slice(1)) {
    if (chunk.startsWith('--')) break;
    const headerEnd = chunk.indexOf('\r\n\r\n');
    if (headerEnd < 0) continue;
    const headers = chunk.slice(0, headerEnd);
    const name = /name="([^"]*)"/i.exec(headers)?.[1];
    if (name === undefined) continue;
    const filename = /filename="([^"]*)"/i.exec(headers)?.[1];
    // The part's value ends with the CRLF that precedes the next delimiter.
    const value = chunk.slice(headerEnd + 4).replace(/\r\n$/, '');
    parts.push({ name, ...(filename !== undefined ? { filename } : {}), value });
  }
  return parts;
}

/** The `FileObject` of a file (its content left out). */
export function fileObject(file: FakeFile): Omit<FakeFile, 'content'> {
  const { content: _content, ...rest } = file;
  return rest;
}

/** `POST /v1/files` and `GET /v1/files/:id/content` (and `GET /v1/files/:id`). */
export function filesRoute(ctx: RouteContext, files: FakeFiles, method: string, path: string): void {
  if (method === 'POST' && path === '/v1/files') {
    const contentType = ctx.record.headers['content-type'];
    const parts = parseMultipart(
      Array.isArray(contentType) ? contentType[0] : contentType,
      typeof ctx.record.body === 'string' ? ctx.record.body : '',
    );
    const purpose = parts.find((p) => p.name === 'purpose')?.value;
    const file = parts.find((p) => p.name === 'file');
    if (!file) {
      throw new HttpError(400, "Missing required parameter: 'file'.", 'invalid_request_error', 'file');
    }
    if (!purpose) {
      throw new HttpError(400, "Missing required parameter: 'purpose'.", 'invalid_request_error', 'purpose');
    }
    ctx.ok(fileObject(files.add(file.filename ?? 'upload', purpose, file.value)));
    return;
  }
  const match = /^\/v1\/files\/([^/]+)(\/content)?$/.exec(path);
  if (method === 'GET' && match) {
    const file = files.get(decodeURIComponent(match[1]!));
    if (!file) {
      throw new HttpError(
        404,
        `No such File object: ${match[1]}`,
        'invalid_request_error',
        'id',
        'file_not_found',
      );
    }
    if (!match[2]) {
      ctx.ok(fileObject(file));
      return;
    }
    ctx.res.setHeader('x-request-id', ctx.record.requestId);
    ctx.res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': String(Buffer.byteLength(file.content)),
    });
    ctx.res.end(file.content);
    return;
  }
  throw new HttpError(404, `Invalid URL (${method} ${path})`);
}
