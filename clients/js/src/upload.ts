/**
 * The upload half of attachments: PUT the bytes to the store's pre-signed URL (docs/protocol.md,
 * "Attachments", step 2), reporting progress. Browsers go through `XMLHttpRequest`, the one
 * API that reports upload progress; elsewhere (Node) `fetch`, which reports the start and the
 * end only.
 */

import { SwitchboardError } from './errors.js';
import type { FetchLike } from './rest.js';

/** What an upload reports as bytes leave: `loaded` of `total`. */
export interface UploadProgress {
  loaded: number;
  total: number;
}

/** The body an upload takes: a `Blob`/`File` (browsers), or bytes. */
export type UploadBody = Blob | ArrayBuffer | Uint8Array;

/** The part of the WHATWG `XMLHttpRequest` an upload uses (injectable for tests). */
export interface XhrLike {
  open(method: string, url: string): void;
  setRequestHeader(name: string, value: string): void;
  send(body?: unknown): void;
  abort(): void;
  timeout: number;
  readonly status: number;
  readonly upload: { onprogress: ((ev: { loaded: number; total: number; lengthComputable?: boolean }) => void) | null };
  onload: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  ontimeout: ((ev: unknown) => void) | null;
  onabort: ((ev: unknown) => void) | null;
}
export type XhrConstructor = new () => XhrLike;

export interface PutOptions {
  url: string;
  /** The ticket's `upload_headers`; those a browser sets itself (`content-length`) are skipped. */
  headers: Record<string, string>;
  body: UploadBody;
  total: number;
  onProgress?: (p: UploadProgress) => void;
  signal?: AbortSignal;
  timeoutMs: number;
  /** `XMLHttpRequest` (browsers); null: use `fetch`. */
  XHR: XhrConstructor | null;
  fetch: FetchLike;
}

/** Headers the caller may not set (the runtime computes them from the body). */
const RUNTIME_HEADERS = new Set(['content-length', 'host']);

/** The size in bytes of an upload body. */
export function sizeOf(body: UploadBody): number {
  if (body instanceof ArrayBuffer) return body.byteLength;
  if (body instanceof Uint8Array) return body.byteLength;
  return (body as Blob).size;
}

/** PUTs `body` to the store; resolves when the store answered 2xx. Errors: `upload_failed` (the store's status), `network`, `timeout`, `cancelled`. */
export function putWithProgress(o: PutOptions): Promise<void> {
  if (o.signal?.aborted) return Promise.reject(new SwitchboardError('cancelled', 'the upload was cancelled'));
  const headers = Object.entries(o.headers).filter(([k]) => !RUNTIME_HEADERS.has(k.toLowerCase()));
  const report = (loaded: number) => {
    try {
      o.onProgress?.({ loaded: Math.min(loaded, o.total), total: o.total });
    } catch {
      /* an app's progress handler must not break the upload */
    }
  };
  report(0);
  return o.XHR ? viaXhr(o, o.XHR, headers, report) : viaFetch(o, headers, report);
}

function storeRefused(status: number): SwitchboardError {
  // The URL is signed for one type, size and deadline: 403 means one of them differs (or it expired).
  return new SwitchboardError('upload_failed', `the object store answered HTTP ${status}`, status);
}

function viaXhr(
  o: PutOptions,
  XHR: XhrConstructor,
  headers: [string, string][],
  report: (loaded: number) => void,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const xhr = new XHR();
    const onAbort = () => xhr.abort();
    const done = (err?: SwitchboardError) => {
      o.signal?.removeEventListener('abort', onAbort);
      xhr.upload.onprogress = xhr.onload = xhr.onerror = xhr.ontimeout = xhr.onabort = null;
      if (err) reject(err);
      else {
        report(o.total);
        resolve();
      }
    };
    xhr.open('PUT', o.url);
    for (const [k, v] of headers) xhr.setRequestHeader(k, v);
    xhr.timeout = o.timeoutMs;
    xhr.upload.onprogress = (ev) => report(ev.loaded);
    xhr.onload = () => done(xhr.status >= 200 && xhr.status < 300 ? undefined : storeRefused(xhr.status));
    xhr.onerror = () => done(new SwitchboardError('network', `PUT to the object store failed`));
    xhr.ontimeout = () => done(new SwitchboardError('timeout', `the upload took longer than ${o.timeoutMs} ms`));
    xhr.onabort = () => done(new SwitchboardError('cancelled', 'the upload was cancelled'));
    o.signal?.addEventListener('abort', onAbort);
    xhr.send(o.body);
  });
}

async function viaFetch(o: PutOptions, headers: [string, string][], report: (loaded: number) => void): Promise<void> {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), o.timeoutMs);
  const onAbort = () => ctrl.abort();
  o.signal?.addEventListener('abort', onAbort);
  let res: Response;
  try {
    res = await o.fetch(o.url, {
      method: 'PUT',
      headers: Object.fromEntries(headers),
      body: o.body as BodyInit,
      signal: ctrl.signal,
    });
  } catch (e) {
    const code = o.signal?.aborted ? 'cancelled' : ctrl.signal.aborted ? 'timeout' : 'network';
    throw new SwitchboardError(code, `PUT to the object store: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    clearTimeout(timer);
    o.signal?.removeEventListener('abort', onAbort);
  }
  await res.text().catch(() => '');
  if (!res.ok) throw storeRefused(res.status);
  report(o.total);
}
