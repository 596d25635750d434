// The SSE transport against a fake fetch: event parsing across chunk boundaries, the session
// id, the heartbeat's empty POST, batching of frames while a POST is in flight, the close
// event, and a refused GET.
import { describe, expect, it } from 'vitest';
import { SseSocket, sseUrlOf } from '../../src/sse.js';

interface Posted {
  url: string;
  body: string;
}

/** A fake server: the GET answers a stream the test pushes chunks into; POSTs are recorded. */
function fakeServer(opts: { status?: number; holdPosts?: boolean } = {}) {
  let push!: (chunk: string) => void;
  let end!: () => void;
  const posts: Posted[] = [];
  const releases: (() => void)[] = [];
  const enc = new TextEncoder();
  const fetch = async (url: string, init?: RequestInit): Promise<Response> => {
    if ((init?.method ?? 'GET') === 'POST') {
      posts.push({ url, body: String(init?.body ?? '') });
      if (opts.holdPosts) await new Promise<void>((r) => releases.push(r));
      return new Response(null, { status: 204 });
    }
    if (opts.status && opts.status !== 200) {
      return new Response('{"error":{"code":"unauthorized","message":"no"}}', { status: opts.status });
    }
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        push = (chunk) => controller.enqueue(enc.encode(chunk));
        end = () => controller.close();
      },
    });
    return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  return { fetch, posts, releases, push: (c: string) => push(c), end: () => end() };
}

const tick = () => new Promise((r) => setTimeout(r, 5));

describe('SseSocket', () => {
  it('parses events split anywhere, answers pings with an empty POST, and reports the close event', async () => {
    const server = fakeServer();
    const sock = new SseSocket({ url: 'http://h:9001/sse', token: () => 'T', fetch: server.fetch });
    const got: unknown[] = [];
    let opened = false;
    let closed: { code: number; reason: string } | undefined;
    sock.onopen = () => (opened = true);
    sock.onmessage = (ev) => got.push(JSON.parse(String(ev.data)));
    sock.onclose = (ev) => (closed = ev);
    await tick();
    expect(opened).toBe(true);
    expect(sock.readyState).toBe(1);
    const stream =
      'event: session\ndata: {"session_id":"abc123"}\n\n' +
      'data: {"type":"hello","user_id":"u","server_id":"s"}\n\n' +
      ': a comment\n' +
      'data: {"type":"pong"}\r\n\r\n' +
      'event: ping\ndata: {}\n\n';
    // One byte at a time for the first 40, then the rest.
    for (const ch of stream.slice(0, 40)) server.push(ch);
    server.push(stream.slice(40));
    await tick();
    expect(sock.sessionId).toBe('abc123');
    expect(got).toEqual([{ type: 'hello', user_id: 'u', server_id: 's' }, { type: 'pong' }]);
    expect(server.posts).toEqual([{ url: 'http://h:9001/sse/abc123/frames?token=T', body: '' }]);
    server.push('event: close\ndata: {"code":1012,"reason":"restarting"}\n\n');
    server.end();
    await tick();
    expect(closed).toEqual({ code: 1012, reason: 'restarting', wasClean: true });
    expect(sock.readyState).toBe(3);
  });

  it('sends in order, one POST at a time, batching what queues meanwhile', async () => {
    const server = fakeServer({ holdPosts: true });
    let token = 'T1';
    const sock = new SseSocket({ url: 'http://h/sse/10.0.0.5', token: () => token, fetch: server.fetch });
    await tick();
    server.push('event: session\ndata: {"session_id":"s1"}\n\n');
    await tick();
    sock.send('{"n":1}');
    await tick();
    sock.send('{"n":2}');
    sock.send('{"n":3}');
    token = 'T2'; // a refreshed token is used from the next request on
    await tick();
    expect(server.posts.map((p) => p.body)).toEqual(['{"n":1}']);
    server.releases.shift()!();
    await tick();
    expect(server.posts.map((p) => p.body)).toEqual(['{"n":1}', '{"n":2}\n{"n":3}']);
    expect(server.posts[1]!.url).toBe('http://h/sse/10.0.0.5/s1/frames?token=T2');
    server.releases.shift()!();
    await tick();
    expect(server.posts).toHaveLength(2);
  });

  it('a refused GET is a close before open, with the HTTP status kept', async () => {
    const server = fakeServer({ status: 401 });
    const sock = new SseSocket({ url: 'http://h/sse', token: () => 'bad', fetch: server.fetch });
    let closed: { code: number } | undefined;
    let errored = false;
    sock.onerror = () => (errored = true);
    sock.onclose = (ev) => (closed = ev);
    await tick();
    expect(errored).toBe(true);
    expect(closed?.code).toBe(1006);
    expect(sock.status).toBe(401);
    expect(() => sock.send('{}')).toThrow();
  });

  it('the SSE URL comes from the socket URL', () => {
    expect(sseUrlOf('ws://127.0.0.1:9001/ws')).toBe('http://127.0.0.1:9001/sse');
    expect(sseUrlOf('wss://chat.example/ws/10.0.0.5')).toBe('https://chat.example/sse/10.0.0.5');
    expect(sseUrlOf('ws://h/socket')).toBe('http://h/socket/sse');
  });
});
