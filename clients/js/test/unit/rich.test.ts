// Rich messages in the SDK: the event-application rule (pure), the attachment upload with
// progress (a fake XMLHttpRequest and a fake deployment), sends naming attachments, live
// `message` frames' attachment ids, and the metadata lookup from history.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SwitchboardClient, type ClientOptions } from '../../src/client.js';
import type { Message, MessageEvent } from '../../src/protocol.js';
import { applyEvent, isImage, normalizeAttachments, setReaction } from '../../src/rich.js';
import { MemoryStorage } from '../../src/storage.js';
import type { XhrLike } from '../../src/upload.js';
import { FakeSocket, fakeServer, makeJwt, seeded, type FakeServer } from './helpers.js';

const msg: Message = {
  conversation_id: 'c1',
  message_id: 'M1',
  seq: 1,
  sender_id: 'alice',
  body: 'hi',
  created_at: 'T1',
  attachments: [{ id: 'A1' }],
};

function ev(seq: number, kind: MessageEvent['kind'], extra: Partial<MessageEvent> = {}): MessageEvent {
  return { conversation_id: 'c1', event_id: `E${seq}`, seq, sender_id: 'bob', kind, message_id: 'M1', created_at: `T${seq}`, ...extra };
}

describe('applyEvent', () => {
  it('an edit sets the body and edited_at; the input is not changed', () => {
    const out = applyEvent(msg, ev(2, 'edit', { sender_id: 'alice', body: 'hi!' }));
    expect(out).toMatchObject({ body: 'hi!', edited_at: 'T2', seq: 1 });
    expect(msg.body).toBe('hi');
  });

  it('a delete leaves a tombstone without body, reactions or attachments, and nothing applies after it', () => {
    const reacted = applyEvent(msg, ev(2, 'reaction', { emoji: '👍' }), 'alice');
    const dead = applyEvent(reacted, ev(3, 'delete', { sender_id: 'alice' }));
    expect(dead).toMatchObject({ deleted: true, body: '' });
    expect(dead.reactions).toBeUndefined();
    expect(dead.attachments).toBeUndefined();
    expect(applyEvent(dead, ev(4, 'edit', { body: 'back' }))).toBe(dead);
    expect(applyEvent(dead, ev(5, 'reaction', { emoji: 'x' }))).toBe(dead);
  });

  it("another message's event changes nothing", () => {
    expect(applyEvent(msg, ev(2, 'edit', { message_id: 'M9', body: 'x' }))).toBe(msg);
  });

  it('reactions: one per user, a new emoji replaces it, none removes it; counts, me, most used first', () => {
    let m = applyEvent(msg, ev(2, 'reaction', { sender_id: 'bob', emoji: '👍' }), 'alice');
    m = applyEvent(m, ev(3, 'reaction', { sender_id: 'carol', emoji: '🎉' }), 'alice');
    m = applyEvent(m, ev(4, 'reaction', { sender_id: 'alice', emoji: '🎉' }), 'alice');
    expect(m.reactions).toEqual([
      { emoji: '🎉', count: 2, me: true, users: ['carol', 'alice'] },
      { emoji: '👍', count: 1, me: false, users: ['bob'] },
    ]);
    m = applyEvent(m, ev(5, 'reaction', { sender_id: 'alice', emoji: '👍' }), 'alice');
    expect(m.reactions).toEqual([
      { emoji: '👍', count: 2, me: true, users: ['bob', 'alice'] },
      { emoji: '🎉', count: 1, me: false, users: ['carol'] },
    ]);
    m = applyEvent(m, ev(6, 'reaction', { sender_id: 'bob' }), 'alice');
    m = applyEvent(m, ev(7, 'reaction', { sender_id: 'alice' }), 'alice');
    expect(m.reactions).toEqual([{ emoji: '🎉', count: 1, me: false, users: ['carol'] }]);
    expect(setReaction(m.reactions!, 'carol', null)).toEqual([]);
  });

  it('attachments: ids become { id }, objects stay, junk goes; images by type', () => {
    expect(normalizeAttachments(['A1', { id: 'A2', size: 3 }, 7, null, ''])).toEqual([{ id: 'A1' }, { id: 'A2', size: 3 }]);
    expect(normalizeAttachments([])).toBeUndefined();
    expect(normalizeAttachments(undefined)).toBeUndefined();
    expect(isImage({ id: 'a', content_type: 'image/png' })).toBe(true);
    expect(isImage({ id: 'a', content_type: 'image/svg+xml' })).toBe(false);
    expect(isImage({ id: 'a' })).toBe(false);
  });
});

// ---------------------------------------------------------------- the client

const BASE = 'http://chat.test';
let server: FakeServer;
let puts: { url: string; headers: Record<string, string>; body: unknown }[];
let storeStatus: number;
let tickets: Record<string, unknown>[];

/** The deployment's ticket route and the store's PUT, on top of the shared fake. */
function withAttachments(base: FakeServer['fetch']): FakeServer['fetch'] {
  return async (url, init) => {
    const json = (status: number, body: unknown) =>
      ({ ok: status >= 200 && status < 300, status, text: async () => JSON.stringify(body) }) as unknown as Response;
    const u = new URL(url);
    const m = u.pathname.match(/^\/api\/v1\/conversations\/([^/]+)\/attachments$/);
    if (m && init?.method === 'POST') {
      const req = JSON.parse(String(init.body));
      tickets.push(req);
      if (req.size > 1000) return json(413, { error: { code: 'too_large', message: 'over the limit' } });
      return json(201, {
        attachment_id: `A${tickets.length}`,
        upload_url: `http://store.test/bucket/k${tickets.length}?X-Amz-Signature=s`,
        upload_method: 'PUT',
        upload_headers: { 'content-type': req.content_type, 'content-length': String(req.size) },
        expires_at: 'later',
      });
    }
    if (u.host === 'store.test') {
      puts.push({ url, headers: (init?.headers ?? {}) as Record<string, string>, body: init?.body });
      return json(storeStatus, {});
    }
    return base(url, init);
  };
}

/** An XMLHttpRequest that reports upload progress in three steps, then the store's status. */
class FakeXhr implements XhrLike {
  static last: FakeXhr | null = null;
  method = '';
  url = '';
  headers: Record<string, string> = {};
  body: unknown;
  timeout = 0;
  status = 0;
  upload: XhrLike['upload'] = { onprogress: null };
  onload: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  ontimeout: ((ev: unknown) => void) | null = null;
  onabort: ((ev: unknown) => void) | null = null;
  constructor() {
    FakeXhr.last = this;
  }
  open(method: string, url: string): void {
    this.method = method;
    this.url = url;
  }
  setRequestHeader(name: string, value: string): void {
    this.headers[name] = value;
  }
  send(body: unknown): void {
    this.body = body;
    const total = (body as Uint8Array).byteLength;
    setTimeout(() => this.upload.onprogress?.({ loaded: Math.floor(total / 3), total }), 10);
    setTimeout(() => this.upload.onprogress?.({ loaded: total, total }), 20);
    setTimeout(() => {
      this.status = storeStatus;
      this.onload?.({});
    }, 30);
  }
  abort(): void {
    this.onabort?.({});
  }
}

function jwt(user = 'alice'): string {
  const now = Math.floor(Date.now() / 1000);
  return makeJwt({ sub: user, iat: now, exp: now + 3600 });
}

function client(extra: Partial<ClientOptions> = {}): SwitchboardClient {
  return new SwitchboardClient({
    baseUrl: BASE,
    getToken: () => jwt(),
    WebSocket: FakeSocket,
    fetch: withAttachments(server.fetch),
    XMLHttpRequest: null,
    storage: new MemoryStorage(),
    random: seeded(1),
    browserEvents: false,
    ping: { intervalMs: 1e9, timeoutMs: 10_000 },
    ...extra,
  });
}

const tick = (ms = 0) => vi.advanceTimersByTimeAsync(ms);

async function connected(c: SwitchboardClient): Promise<FakeSocket> {
  const p = c.connect();
  await tick(0);
  const ws = FakeSocket.last();
  ws.hello();
  await p;
  await tick(0);
  return ws;
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.instances = [];
  FakeXhr.last = null;
  server = fakeServer();
  puts = [];
  tickets = [];
  storeStatus = 200;
});
afterEach(() => {
  vi.useRealTimers();
});

describe('uploadAttachment', () => {
  it('asks for a ticket, PUTs through XMLHttpRequest with its headers (not content-length) and reports progress', async () => {
    const c = client({ XMLHttpRequest: FakeXhr });
    const bytes = new Uint8Array(300).fill(7);
    const progress: number[] = [];
    const p = c.uploadAttachment('c1', bytes, { filename: 'cat.png', contentType: 'image/PNG', onProgress: (x) => progress.push(x.loaded) });
    await tick(100);
    const a = await p;
    expect(tickets).toEqual([{ filename: 'cat.png', content_type: 'image/png', size: 300 }]);
    const xhr = FakeXhr.last!;
    expect(xhr.method).toBe('PUT');
    expect(xhr.url).toBe('http://store.test/bucket/k1?X-Amz-Signature=s');
    expect(xhr.headers).toEqual({ 'content-type': 'image/png' });
    expect(xhr.body).toBe(bytes);
    expect(progress).toEqual([0, 100, 300, 300]);
    expect(a).toEqual({ id: 'A1', filename: 'cat.png', content_type: 'image/png', size: 300 });
  });

  it('a refusing store is upload_failed with its status; the API refusing the size is its code', async () => {
    const c = client({ XMLHttpRequest: FakeXhr });
    storeStatus = 403;
    const p = c.uploadAttachment('c1', new Uint8Array(10), { filename: 'a.bin' });
    const caught = p.catch((e) => e);
    await tick(100);
    expect(await caught).toMatchObject({ code: 'upload_failed', status: 403 });
    const big = c.uploadAttachment('c1', new Uint8Array(2000), { filename: 'big.bin' }).catch((e) => e);
    await tick(0);
    expect(await big).toMatchObject({ code: 'too_large' });
    expect(FakeXhr.last!.url).toContain('k1'); // the refused one never reached the store
  });

  it('without XMLHttpRequest it PUTs with fetch: start and end are reported; a Blob gives its name and type', async () => {
    const c = client();
    const file = new File([new Uint8Array(5)], 'notes.txt', { type: 'text/plain' });
    const progress: number[] = [];
    const a = await c.uploadAttachment('c1', file, { onProgress: (x) => progress.push(x.loaded) });
    expect(a).toMatchObject({ id: 'A1', filename: 'notes.txt', content_type: 'text/plain', size: 5 });
    expect(puts).toHaveLength(1);
    expect(puts[0]!.headers).toEqual({ 'content-type': 'text/plain' });
    expect(progress).toEqual([0, 5]);
  });

  it('an aborted signal cancels the upload', async () => {
    const c = client({ XMLHttpRequest: FakeXhr });
    const ctrl = new AbortController();
    const p = c.uploadAttachment('c1', new Uint8Array(30), { filename: 'x', signal: ctrl.signal }).catch((e) => e);
    await tick(15);
    ctrl.abort();
    expect(await p).toMatchObject({ code: 'cancelled' });
  });
});

describe('attachments on messages', () => {
  it('send names its attachments; our own message and a live one carry them as { id }', async () => {
    const c = client();
    const got: Message[] = [];
    c.on('message', (m) => got.push(m));
    const ws = await connected(c);
    const p = c.send('c1', 'look', { attachments: ['A1', 'A2'] });
    await tick(0);
    const [frame] = ws.sentOfType('send');
    expect(frame).toMatchObject({ body: 'look', attachments: ['A1', 'A2'] });
    ws.frame({ type: 'sent', client_msg_id: frame!.client_msg_id, conversation_id: 'c1', message_id: 'M1', seq: 1, created_at: 'T' });
    await p;
    ws.frame({ type: 'message', conversation_id: 'c1', message_id: 'M2', seq: 2, sender_id: 'bob', body: 'and this', created_at: 'T', attachments: ['A9'] });
    ws.frame({ type: 'message', conversation_id: 'c1', message_id: 'M3', seq: 3, sender_id: 'bob', body: 'plain', created_at: 'T' });
    await tick(0);
    expect(got.map((m) => m.attachments)).toEqual([[{ id: 'A1' }, { id: 'A2' }], [{ id: 'A9' }], undefined]);
    // A plain send has no attachments field at all (old servers see the frame they always did).
    void c.send('c1', 'no files');
    await tick(0);
    expect('attachments' in ws.sentOfType('send')[1]!).toBe(false);
    await expect(c.send('c1', 'x', { attachments: ['A1', 'A1'] })).rejects.toMatchObject({ code: 'bad_request' });
  });

  it('attachmentsOf reads the row from history, waits for a row not stored yet, and caches the answer', async () => {
    const c = client();
    const row = {
      conversation_id: 'c1', message_id: 'M2', seq: 2, sender_id: 'bob', body: 'pic', created_at: 'T',
      attachments: [{ id: 'A9', filename: 'cat.png', content_type: 'image/png', size: 3, width: 4, height: 2, url: 'http://store.test/get', url_expires_at: new Date(Date.now() + 300_000).toISOString() }],
    };
    const p = c.attachmentsOf('c1', 2);
    await tick(0);
    // History trails live delivery: the row lands a moment later.
    server.history.set('c1', [{ ...row, seq: 1, message_id: 'M1', attachments: undefined }]);
    await tick(150);
    server.history.set('c1', [{ ...row, seq: 1, message_id: 'M1', attachments: undefined }, row]);
    await tick(1_000);
    expect(await p).toEqual(row.attachments);
    const calls = server.calls.filter((x) => x.url.includes('/messages')).length;
    expect(await c.attachmentsOf('c1', 2)).toEqual(row.attachments);
    expect(server.calls.filter((x) => x.url.includes('/messages')).length).toBe(calls);
    // Near the URL's expiry the row is read again (a fresh URL).
    vi.setSystemTime(Date.now() + 250_000);
    await c.attachmentsOf('c1', 2);
    expect(server.calls.filter((x) => x.url.includes('/messages')).length).toBe(calls + 1);
    const q = new URL(server.calls.filter((x) => x.url.includes('/messages')).at(-1)!.url).searchParams;
    expect([q.get('after_seq'), q.get('limit')]).toEqual(['1', '1']);
  });

  it('attachmentsOf gives up with unavailable when the row never comes', async () => {
    const c = client();
    const p = c.attachmentsOf('c1', 5, { waitMs: 1_000 }).catch((e) => e);
    await tick(3_000);
    expect(await p).toMatchObject({ code: 'unavailable' });
  });
});
