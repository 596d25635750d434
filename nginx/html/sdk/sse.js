// Generated from clients/js/src/sse.ts by clients/js/vendor-demo.sh: do not edit.
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
/** A POST carries frames up to about this many bytes (the server takes 256 KiB). */
const POST_BATCH_BYTES = 128 * 1024;
/**
 * The SSE endpoint of a socket server from the WebSocket URL the registry hands out: the
 * scheme `ws`/`wss` becomes `http`/`https` and the last path segment `ws` becomes `sse`
 * (`ws://h:9001/ws` → `http://h:9001/sse`; behind a per-server tunnel,
 * `wss://h/ws/10.0.0.5` → `https://h/sse/10.0.0.5`). No `ws` segment: `/sse` is appended.
 */
export function sseUrlOf(socketUrl) {
    const u = new URL(socketUrl);
    u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
    const segments = u.pathname.split('/');
    const at = segments.lastIndexOf('ws');
    if (at >= 0)
        segments[at] = 'sse';
    else
        segments.push('sse');
    u.pathname = segments.join('/').replace(/\/{2,}/g, '/');
    u.search = '';
    return u.toString();
}
/** One SSE session, as a `WebSocketLike`. */
export class SseSocket {
    readyState = 0;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    /** The HTTP status of a refused `GET` (401, 429, 503…), for callers that want it. */
    status;
    /** The session's id, from the stream's first event. */
    sessionId;
    opts;
    ctrl = new AbortController();
    queue = [];
    pongWanted = false;
    posting = false;
    closeFrame;
    ended = false;
    constructor(opts) {
        this.opts = opts;
        void this.run();
    }
    send(data) {
        if (this.readyState !== 1)
            throw new Error('SSE session is not open');
        this.queue.push(data);
        void this.pump();
    }
    close(code = 1000, reason = '') {
        if (this.readyState >= 2)
            return;
        this.readyState = 2;
        this.ctrl.abort();
        this.end(code, reason, true);
    }
    withToken(url) {
        const u = new URL(url);
        u.searchParams.set('token', this.opts.token());
        return u.toString();
    }
    async run() {
        let res;
        try {
            res = await this.opts.fetch(this.withToken(this.opts.url), {
                headers: { accept: 'text/event-stream' },
                cache: 'no-store',
                signal: this.ctrl.signal,
            });
        }
        catch (e) {
            this.fail(`SSE request failed: ${e instanceof Error ? e.message : String(e)}`);
            return;
        }
        if (!res.ok || !res.body) {
            this.status = res.status;
            await res.text().catch(() => '');
            this.fail(`SSE refused: HTTP ${res.status}`);
            return;
        }
        if (this.readyState !== 0)
            return; // closed meanwhile
        this.readyState = 1;
        this.onopen?.({});
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        let event = '';
        let data = [];
        try {
            for (;;) {
                const { value, done } = await reader.read();
                if (done)
                    break;
                buffer += decoder.decode(value, { stream: true });
                let nl;
                while ((nl = buffer.indexOf('\n')) >= 0) {
                    const line = buffer.slice(0, nl).replace(/\r$/, '');
                    buffer = buffer.slice(nl + 1);
                    if (line === '') {
                        if (data.length)
                            this.dispatch(event, data.join('\n'));
                        event = '';
                        data = [];
                    }
                    else if (line.startsWith(':')) {
                        // A comment.
                    }
                    else {
                        const colon = line.indexOf(':');
                        const field = colon < 0 ? line : line.slice(0, colon);
                        let value = colon < 0 ? '' : line.slice(colon + 1);
                        if (value.startsWith(' '))
                            value = value.slice(1);
                        if (field === 'event')
                            event = value;
                        else if (field === 'data')
                            data.push(value);
                    }
                    if (this.readyState !== 1)
                        return;
                }
            }
        }
        catch {
            /* aborted, or the connection broke */
        }
        if (this.closeFrame)
            this.end(this.closeFrame.code, this.closeFrame.reason, true);
        else
            this.end(1006, 'SSE stream ended', false);
    }
    dispatch(event, data) {
        switch (event) {
            case 'session':
                try {
                    this.sessionId = JSON.parse(data).session_id;
                }
                catch {
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
                    this.closeFrame = JSON.parse(data);
                }
                catch {
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
    async pump() {
        if (this.posting || !this.sessionId)
            return;
        this.posting = true;
        try {
            while (this.readyState === 1 && (this.queue.length || this.pongWanted)) {
                const batch = [];
                let bytes = 0;
                while (this.queue.length && (batch.length === 0 || bytes + this.queue[0].length < POST_BATCH_BYTES)) {
                    const frame = this.queue.shift();
                    bytes += frame.length + 1;
                    batch.push(frame);
                }
                this.pongWanted = false;
                const url = this.withToken(`${this.opts.url.replace(/\/+$/, '')}/${this.sessionId}/frames`);
                let res;
                try {
                    res = await this.opts.fetch(url, {
                        method: 'POST',
                        headers: { 'content-type': 'text/plain;charset=UTF-8' },
                        body: batch.join('\n'),
                        signal: this.ctrl.signal,
                    });
                    await res.text().catch(() => '');
                }
                catch (e) {
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
        }
        finally {
            this.posting = false;
        }
    }
    fail(reason) {
        if (this.ended)
            return;
        this.onerror?.({ reason });
        this.ctrl.abort();
        this.end(1006, reason, false);
    }
    end(code, reason, wasClean) {
        if (this.ended)
            return;
        this.ended = true;
        this.readyState = 3;
        this.queue = [];
        this.onclose?.({ code, reason, wasClean });
    }
}
