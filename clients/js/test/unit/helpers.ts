// Test doubles: a seeded PRNG, unsigned JWTs, a fake WebSocket and a fake deployment (fetch).
import type { WebSocketLike } from '../../src/client.js';

/** mulberry32: a small deterministic PRNG in [0, 1). */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const b64url = (s: string) => btoa(s).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');

/** A JWT-shaped token (not signed: the fakes do not verify). */
export function makeJwt(claims: Record<string, unknown>): string {
  return `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}.sig`;
}

export class FakeSocket implements WebSocketLike {
  static instances: FakeSocket[] = [];
  readyState = 0;
  sent: Record<string, unknown>[] = [];
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closedByClient: { code?: number; reason?: string } | null = null;
  constructor(public url: string) {
    FakeSocket.instances.push(this);
  }
  send(data: string): void {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(data));
  }
  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }
  // Server side.
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(f: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  hello(user = 'alice', server = 'ss-1'): void {
    this.open();
    this.frame({ type: 'hello', user_id: user, server_id: server });
  }
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  sentOfType(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.type === type);
  }
  static last(): FakeSocket {
    const s = FakeSocket.instances[FakeSocket.instances.length - 1];
    if (!s) throw new Error('no socket yet');
    return s;
  }
}

export interface FakeServer {
  fetch: (url: string, init?: RequestInit) => Promise<Response>;
  calls: { url: string; auth: string | null }[];
  /** Tokens the REST API refuses with 401. */
  refused: Set<string>;
  registryDown: boolean;
  conversations: { id: string; last_seq: number }[];
  history: Map<string, Record<string, unknown>[]>;
}

export function fakeServer(): FakeServer {
  const server: FakeServer = {
    calls: [],
    refused: new Set(),
    registryDown: false,
    conversations: [],
    history: new Map(),
    fetch: async (url, init) => {
      const headers = (init?.headers ?? {}) as Record<string, string>;
      const auth = headers.authorization ?? null;
      server.calls.push({ url, auth });
      // A minimal Response: real ones read their body through streams, which fake timers can stall.
      const json = (status: number, body: unknown) =>
        ({ ok: status >= 200 && status < 300, status, text: async () => JSON.stringify(body) }) as unknown as Response;
      const u = new URL(url);
      if (u.pathname === '/api/v1/socket-server') {
        if (server.registryDown) return json(503, { error: { code: 'no_capacity', message: 'full' } });
        return json(200, { server_id: 'ss-1', url: 'ws://0.0.0.0:9001/ws', connections: 0, max_connections: 10 });
      }
      const token = auth?.replace(/^Bearer /, '') ?? '';
      if (server.refused.has(token)) return json(401, { error: { code: 'unauthorized', message: 'bad token' } });
      if (u.pathname === '/api/v1/conversations') {
        return json(200, { conversations: server.conversations, next_cursor: null });
      }
      const m = u.pathname.match(/^\/api\/v1\/conversations\/([^/]+)\/messages$/);
      if (m) {
        const after = Number(u.searchParams.get('after_seq') ?? 0);
        const limit = Number(u.searchParams.get('limit') ?? 100);
        const rows = (server.history.get(m[1]!) ?? []).filter((r) => (r.seq as number) > after).slice(0, limit);
        // Rows with an `event_id` are edits, deletes and reactions: listed only with events=true.
        if (u.searchParams.get('events') === 'true') {
          return json(200, { messages: rows.filter((r) => !('event_id' in r)), events: rows.filter((r) => 'event_id' in r) });
        }
        return json(200, { messages: rows.filter((r) => !('event_id' in r)) });
      }
      return json(404, { error: { code: 'not_found', message: u.pathname } });
    },
  };
  return server;
}

/** Lets pending promise callbacks (fetch answers, storage writes) run. */
export async function flush(times = 10): Promise<void> {
  for (let i = 0; i < times; i++) await Promise.resolve();
}
