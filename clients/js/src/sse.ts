/**
 * The fallback transport where WebSocket upgrades are blocked (docs/protocol.md, "The HTTP
 * fallback"): server frames over Server-Sent Events (`GET …/sse?token=`), client frames over
 * `POST …/sse/{session_id}/frames`. {@link SseSocket} looks like a `WebSocket` to the client
 * (the same `WebSocketLike` surface), so the lifecycle, outbox, ordering and liveness code is
 * the same for both transports.
 *
 * Built on `fetch` with a streamed body, not `EventSource`: it runs in Node 20 (which has no
 * `EventSource`), it sees the HTTP status of a refusal (a browser's `EventSource` and
 * `WebSocket` hide it), and it never reconnects on its own (the client reconnects through the
 * registry, as for a WebSocket). Requests are CORS "simple" ones (no custom headers, the token
 * in the query string, a `text/plain` body), so a page served from another origin than the
 * socket server needs no preflight.
 */

import type { FetchLike } from './rest.js';
import type { WebSocketLike } from './client.js';

/** A POST carries frames up to about this many bytes (the server takes 256 KiB). */
const POST_BATCH_BYTES = 128 * 1024;

/**
 * The SSE endpoint of a socket server from the WebSocket URL the registry hands out: the
 * scheme `ws`/`wss` becomes `http`/`https` and the last path segment `ws` becomes `sse`
 * (`ws://h:9001/ws` → `http://h:9001/sse`; behind a per-server tunnel,
 * `wss://h/ws/10.0.0.5` → `https://h/sse/10.0.0.5`). No `ws` segment: `/sse` is appended.
 */
export function sseUrlOf(socketUrl: string): string {
  const u = new URL(socketUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
  const segments = u.pathname.split('/');
  const at = segments.lastIndexOf('ws');
  if (at >= 0) segments[at] = 'sse';
  else segments.push('sse');
  u.pathname = segments.join('/').replace(/\/{2,}/g, '/');
  u.search = '';
  return u.toString();
}

export interface SseSocketOptions {
  /** `sseUrlOf(<the registry's url>)`. */
  url: string;
  /** The token of every request (the client's current one, so an in-band refresh counts). */
  token: () => string;
  fetch: FetchLike;
}

/** One SSE session, as a `WebSocketLike`. */
export class SseSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  /** The HTTP status of a refused `GET` (401, 429, 503…), for callers that want it. */
  status: number | undefined;
  /** The session's id, from the stream's first event. */
  sessionId: string | undefined;

  private readonly opts: SseSocketOptions;
  private readonly ctrl = new AbortController();
  private queue: string[] = [];
  private pongWanted = false;
  private posting = false;
  private closeFrame: { code: number; reason: string } | undefined;
  private ended = false;

  constructor(opts: SseSocketOptions) {
    this.opts = opts;
    void this.run();
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('SSE session is not open');
    this.queue.push(data);
    void this.pump();
  }

  close(code = 1000, reason = ''): void {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    this.ctrl.abort();
    this.end(code, reason, true);
  }

  private withToken(url: string): string {
    const u = new URL(url);
    u.searchParams.set('token', this.opts.token());
    return u.toString();
  }

  private async run(): Promise<void> {
    let res: Response;
    try {
      res = await this.opts.fetch(this.withToken(this.opts.url), {
        headers: { accept: 'text/event-stream' },
        cache: 'no-store',
        signal: this.ctrl.signal,
      });
    } catch (e) {
      this.fail(`SSE request failed: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    if (!res.ok || !res.body) {
      this.status = res.status;
      await res.text().catch(() => '');
      this.fail(`SSE refused: HTTP ${res.status}`);
      return;
    }
    if (this.readyState !== 0) return; // closed meanwhile
    this.readyState = 1;
    this.onopen?.({});
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let event = '';
    let data: string[] = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl: number;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, '');
          buffer = buffer.slice(nl + 1);
          if (line === '') {
            if (data.length) this.dispatch(event, data.join('\n'));
            event = '';
            data = [];
          } else if (line.startsWith(':')) {
            // A comment.
          } else {
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            let value = colon < 0 ? '' : line.slice(colon + 1);
            if (value.startsWith(' ')) value = value.slice(1);
            if (field === 'event') event = value;
            else if (field === 'data') data.push(value);
          }
          if (this.readyState !== 1) return;
        }
      }
    } catch {
      /* aborted, or the connection broke */
    }
    if (this.closeFrame) this.end(this.closeFrame.code, this.closeFrame.reason, true);
    else this.end(1006, 'SSE stream ended', false);
  }

  private dispatch(event: string, data: string): void {
    switch (event) {
      case 'session':
        try {
          this.sessionId = (JSON.parse(data) as { session_id?: string }).session_id;
        } catch {
          /* malformed: POSTs will fail and end the session */
        }
        void this.pump();
        return;
      case 'ping':
        // The heartbeat: answered with an empty POST (a WebSocket's pong).
        this.pongWanted = true;
        void this.pump();
        return;
      case 'close':
        try {
          this.closeFrame = JSON.parse(data) as { code: number; reason: string };
        } catch {
          this.closeFrame = { code: 1006, reason: 'malformed close event' };
        }
        return;
      case '':
      case 'message':
        this.onmessage?.({ data });
        return;
      default:
        return; // an event a later server adds: ignorable
    }
  }

  /** POSTs what is queued, one request at a time, so the server reads the frames in order. */
  private async pump(): Promise<void> {
    if (this.posting || !this.sessionId) return;
    this.posting = true;
    try {
      while (this.readyState === 1 && (this.queue.length || this.pongWanted)) {
        const batch: string[] = [];
        let bytes = 0;
        while (this.queue.length && (batch.length === 0 || bytes + this.queue[0]!.length < POST_BATCH_BYTES)) {
          const frame = this.queue.shift()!;
          bytes += frame.length + 1;
          batch.push(frame);
        }
        this.pongWanted = false;
        const url = this.withToken(`${this.opts.url.replace(/\/+$/, '')}/${this.sessionId}/frames`);
        let res: Response;
        try {
          res = await this.opts.fetch(url, {
            method: 'POST',
            headers: { 'content-type': 'text/plain;charset=UTF-8' },
            body: batch.join('\n'),
            signal: this.ctrl.signal,
          });
          await res.text().catch(() => '');
        } catch (e) {
          this.fail(`SSE POST failed: ${e instanceof Error ? e.message : String(e)}`);
          return;
        }
        if (!res.ok) {
          // The session is gone (404), or refused our frames: like a broken socket.
          this.status = res.status;
          this.fail(`SSE POST refused: HTTP ${res.status}`);
          return;
        }
      }
    } finally {
      this.posting = false;
    }
  }

  private fail(reason: string): void {
    if (this.ended) return;
    this.onerror?.({ reason });
    this.ctrl.abort();
    this.end(1006, reason, false);
  }

  private end(code: number, reason: string, wasClean: boolean): void {
    if (this.ended) return;
    this.ended = true;
    this.readyState = 3;
    this.queue = [];
    this.onclose?.({ code, reason, wasClean });
  }
}
