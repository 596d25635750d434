// SwitchboardClient against a fake WebSocket and a fake deployment, with fake timers and
// seeded randomness: the state machine, the outbox, ordering, tokens and liveness.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SwitchboardClient, type ClientOptions, type StateChange } from '../../src/client.js';
import { SwitchboardError } from '../../src/errors.js';
import type { Message, MessageEvent } from '../../src/protocol.js';
import { MemoryStorage } from '../../src/storage.js';
import { FakeSocket, fakeServer, flush, makeJwt, seeded, type FakeServer } from './helpers.js';

const BASE = 'http://chat.test';
let server: FakeServer;
let tokenCalls: number;
let nextToken: () => string;

function jwt(user = 'alice', lifetimeS = 3600): string {
  const now = Math.floor(Date.now() / 1000);
  return makeJwt({ sub: user, iat: now, exp: now + lifetimeS, n: Math.random() });
}

function client(extra: Partial<ClientOptions> = {}): SwitchboardClient {
  return new SwitchboardClient({
    baseUrl: BASE,
    getToken: () => {
      tokenCalls++;
      return nextToken();
    },
    WebSocket: FakeSocket,
    fetch: server.fetch,
    storage: new MemoryStorage(),
    random: seeded(1),
    browserEvents: false,
    // No pings unless a test asks: the fake server does not answer them.
    ping: { intervalMs: 1e9, timeoutMs: 10_000 },
    ...extra,
  });
}

/** Runs timers and promise callbacks for `ms` of fake time. */
const tick = (ms = 0) => vi.advanceTimersByTimeAsync(ms);

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.instances = [];
  server = fakeServer();
  tokenCalls = 0;
  nextToken = () => jwt();
});
afterEach(() => {
  vi.useRealTimers();
});

async function connected(c: SwitchboardClient): Promise<FakeSocket> {
  const p = c.connect();
  await tick(0);
  const ws = FakeSocket.last();
  ws.hello();
  await p;
  await tick(0);
  return ws;
}

describe('state machine', () => {
  it('goes disconnected → connecting → connected → disconnected, with codes and reasons', async () => {
    const c = client();
    const seen: StateChange[] = [];
    c.on('state', (s) => seen.push(s));
    const ws = await connected(c);
    expect(ws.url).toMatch(/^ws:\/\/chat\.test:9001\/ws\?token=/); // 0.0.0.0 → the entry point's host
    c.disconnect();
    expect(seen.map((s) => [s.previous, s.state, s.code])).toEqual([
      ['disconnected', 'connecting', 'connect'],
      ['connecting', 'connected', 'hello'],
      ['connected', 'disconnected', 'disconnect'],
    ]);
    expect(ws.closedByClient?.code).toBe(1000);
  });

  it('a second connect() while connecting opens no second socket and answers the same promise', async () => {
    const c = client();
    const p1 = c.connect();
    const p2 = c.connect();
    expect(p2).toBe(p1);
    await tick(0);
    const p3 = c.connect();
    expect(p3).toBe(p1);
    expect(FakeSocket.instances.length).toBe(1);
    FakeSocket.last().hello();
    await p1;
    await c.connect(); // connected: no-op
    expect(FakeSocket.instances.length).toBe(1);
    expect(server.calls.filter((x) => x.url.endsWith('/socket-server')).length).toBe(1);
  });

  it('StrictMode: connect(), disconnect() in the cleanup, connect() again opens one socket', async () => {
    const c = client();
    const p1 = c.connect();
    c.disconnect();
    const p2 = c.connect();
    await expect(p1).rejects.toMatchObject({ code: 'cancelled' });
    await tick(0);
    expect(FakeSocket.instances.length).toBe(1);
    FakeSocket.last().hello();
    await p2;
    expect(c.state).toBe('connected');
  });

  it('disconnect() cancels a pending connect', async () => {
    const c = client();
    const p = c.connect();
    c.disconnect();
    await expect(p).rejects.toMatchObject({ code: 'cancelled' });
    await tick(60_000);
    expect(FakeSocket.instances.length).toBe(0);
    expect(c.state).toBe('disconnected');
  });

  it('asks the registry on every attempt, with full-jitter delays that grow', async () => {
    const c = client();
    const delays: number[] = [];
    c.on('retry', (r) => delays.push(r.delayMs));
    server.registryDown = true;
    void c.connect();
    await tick(0);
    for (let i = 0; i < 6; i++) await tick(20_000);
    const asks = server.calls.filter((x) => x.url.endsWith('/socket-server')).length;
    expect(asks).toBeGreaterThanOrEqual(6);
    expect(delays.length).toBe(asks);
    delays.forEach((d, i) => expect(d).toBeLessThan(Math.min(20_000, 500 * 2 ** i)));
    server.registryDown = false;
    await tick(20_000);
    FakeSocket.last().hello();
    await tick(0);
    expect(c.state).toBe('connected');
  });

  it('after a 1012 close, waits a random restart delay (not zero for everyone) before asking again', async () => {
    const c = client({ random: () => 0.5 });
    const retries: { delayMs: number; code: string }[] = [];
    c.on('retry', (r) => retries.push(r));
    const ws = await connected(c);
    const asks = () => server.calls.filter((x) => x.url.endsWith('/socket-server')).length;
    ws.serverClose(1012, 'restarting');
    await tick(0);
    expect(c.state).toBe('connecting');
    expect(retries[0]).toMatchObject({ delayMs: 2500, code: 'server_restart' });
    await tick(2_499);
    expect(asks()).toBe(1);
    await tick(1);
    expect(asks()).toBe(2);
  });

  it('reconnects after a drop and delivers handlers once (no duplicates after reconnects)', async () => {
    const c = client();
    const got: number[] = [];
    c.on('message', (m) => got.push(m.seq));
    let ws = await connected(c);
    for (let i = 1; i <= 3; i++) {
      ws.frame({ type: 'message', conversation_id: 'c', message_id: `m${i}`, seq: i, sender_id: 'bob', body: '', created_at: '' });
      ws.serverClose(1006);
      await tick(1_000);
      ws = FakeSocket.last();
      ws.hello();
      await tick(0);
    }
    expect(got).toEqual([1, 2, 3]);
  });

  it('every on() answers an unsubscribe', async () => {
    const c = client();
    const seen: string[] = [];
    const off = c.on('state', (s) => seen.push(s.state));
    off();
    await connected(c);
    expect(seen).toEqual([]);
  });
});

describe('outbox', () => {
  it('persists before transmitting, resends on every hello, resolves once with the server answer', async () => {
    const storage = new MemoryStorage();
    const c = client({ storage });
    let ws = await connected(c);
    const p = c.send('c1', 'hi');
    await tick(0);
    const frame = ws.sentOfType('send')[0]!;
    expect(storage.getItem('switchboard:alice:outbox')).toContain(frame.client_msg_id as string);
    ws.serverClose(1006);
    await tick(1_000);
    ws = FakeSocket.last();
    ws.hello();
    await tick(0);
    expect(ws.sentOfType('send').map((f) => f.client_msg_id)).toEqual([frame.client_msg_id]);
    const sentEvents: string[] = [];
    c.on('sent', (e) => sentEvents.push(e.entry.client_msg_id));
    const ack = { type: 'sent', client_msg_id: frame.client_msg_id, conversation_id: 'c1', message_id: 'M1', seq: 1, created_at: 'T' };
    ws.frame(ack);
    ws.frame(ack); // a repeat answer changes nothing
    await tick(0);
    await expect(p).resolves.toEqual({ client_msg_id: frame.client_msg_id, conversation_id: 'c1', message_id: 'M1', seq: 1, created_at: 'T' });
    expect(sentEvents).toEqual([frame.client_msg_id]);
    expect(c.outbox()).toEqual([]);
    expect(JSON.parse(storage.getItem('switchboard:alice:outbox')!)).toEqual([]);
  });

  it('edits, deletes, reactions and replies go through the outbox and come back as events in seq order', async () => {
    const c = client();
    const got: string[] = [];
    c.on('message', (x: Message) => got.push(`m${x.seq}${x.reply_to ? `>${x.reply_to}` : ''}`));
    c.on('event', (x: MessageEvent) => got.push(`${x.kind}${x.seq}:${x.message_id}:${x.body ?? x.emoji ?? ''}`));
    const ws = await connected(c);
    const calls = [
      c.send('c1', 'hi', { replyTo: 'M0' }),
      c.edit('c1', 'M1', 'hi!'),
      c.react('c1', 'M1', 'x'),
      c.react('c1', 'M1', null),
      c.deleteMessage('c1', 'M1'),
    ];
    await tick(0);
    const frames = ws.sent.filter((f) => typeof f.client_msg_id === 'string');
    expect(frames.map((f) => f.type)).toEqual(['send', 'edit', 'react', 'react', 'delete']);
    expect(frames[0]!.reply_to).toBe('M0');
    expect(frames[1]).toMatchObject({ message_id: 'M1', body: 'hi!' });
    expect(frames[2]).toMatchObject({ message_id: 'M1', emoji: 'x' });
    expect(frames[3]).toMatchObject({ message_id: 'M1', emoji: null });
    frames.forEach((f, i) =>
      ws.frame({ type: 'sent', client_msg_id: f.client_msg_id, conversation_id: 'c1', message_id: `E${i + 1}`, seq: i + 1, created_at: 'T' }),
    );
    await tick(0);
    const acks = await Promise.all(calls);
    expect(acks.map((a) => a.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(got).toEqual(['m1>M0', 'edit2:M1:hi!', 'reaction3:M1:x', 'reaction4:M1:', 'delete5:M1:']);
    expect(c.outbox()).toEqual([]);
    expect(c.cursor('c1')).toBe(5);
  });

  it('resends when no sent arrives in time, with the same client_msg_id', async () => {
    const c = client({ sendTimeoutMs: 5_000 });
    const ws = await connected(c);
    void c.send('c1', 'hi');
    await tick(0);
    expect(ws.sentOfType('send').length).toBe(1);
    await tick(4_500);
    expect(ws.sentOfType('send').length).toBe(1);
    await tick(1_000);
    const sends = ws.sentOfType('send');
    expect(sends.length).toBe(2);
    expect(sends[1]!.client_msg_id).toBe(sends[0]!.client_msg_id);
  });

  it('survives a reload: a new client on the same storage sends the stored entries at its hello', async () => {
    const storage = new MemoryStorage();
    const a = client({ storage });
    void a.send('c1', 'one');
    void a.send('c1', 'two');
    await tick(0);
    a.close();
    const b = client({ storage });
    await b.load();
    expect(b.outbox().map((e) => e.body)).toEqual(['one', 'two']);
    const ws = await connected(b);
    expect(ws.sentOfType('send').map((f) => f.body)).toEqual(['one', 'two']);
  });

  it('a history row with our client_msg_id completes the entry when its sent was lost', async () => {
    const c = client();
    const ws = await connected(c);
    const p = c.send('c1', 'hi');
    await tick(0);
    const id = ws.sentOfType('send')[0]!.client_msg_id as string;
    server.history.set('c1', [{ conversation_id: 'c1', message_id: 'M1', seq: 1, sender_id: 'alice', body: 'hi', created_at: 'T', client_msg_id: id }]);
    // Someone else's message at seq 2 reveals a gap; the fill finds our row.
    ws.frame({ type: 'message', conversation_id: 'c1', message_id: 'M2', seq: 2, sender_id: 'bob', body: 'yo', created_at: 'T' });
    await tick(10);
    await expect(p).resolves.toMatchObject({ message_id: 'M1', seq: 1 });
    expect(c.outbox()).toEqual([]);
  });

  it('a refusal fails the entry (kept, listed); retry() sends it again; cancel() removes it', async () => {
    const c = client();
    const ws = await connected(c);
    const failed: string[] = [];
    c.on('sendFailed', (e) => failed.push(e.error.code));
    const p = c.send('c1', 'hi');
    await tick(0);
    const id = ws.sentOfType('send')[0]!.client_msg_id as string;
    ws.frame({ type: 'error', code: 'not_a_member', message: 'no', client_msg_id: id });
    await tick(0);
    await expect(p).rejects.toMatchObject({ code: 'not_a_member' });
    expect(failed).toEqual(['not_a_member']);
    expect(c.outbox()).toMatchObject([{ client_msg_id: id, status: 'failed', error: { code: 'not_a_member' } }]);
    await tick(30_000);
    expect(ws.sentOfType('send').length).toBe(1); // failed entries are not resent on their own
    await c.retry(id);
    expect(ws.sentOfType('send').length).toBe(2);
    expect(await c.cancel(id)).toBe(true);
    expect(c.outbox()).toEqual([]);
  });

  it('a retryable refusal is resent after a short delay', async () => {
    const c = client();
    const ws = await connected(c);
    void c.send('c1', 'hi');
    await tick(0);
    const id = ws.sentOfType('send')[0]!.client_msg_id as string;
    ws.frame({ type: 'error', code: 'unavailable', message: 'busy', client_msg_id: id });
    await tick(2_100);
    expect(ws.sentOfType('send').length).toBe(2);
  });

  it('refuses a body over 64 KiB without queueing it; typing is never queued', async () => {
    const c = client();
    await expect(c.send('c1', 'x'.repeat(65_537))).rejects.toBeInstanceOf(SwitchboardError);
    expect(c.typing('c1')).toBe(false); // not connected
    const ws = await connected(c);
    expect(c.outbox()).toEqual([]);
    expect(ws.sentOfType('typing')).toEqual([]);
    expect(c.typing('c1')).toBe(true);
    expect(c.typing('c1')).toBe(false); // throttled
    await tick(2_000);
    expect(c.typing('c1')).toBe(true);
    expect(ws.sentOfType('typing').length).toBe(2);
  });
});

describe('ordering', () => {
  const m = (seq: number, conv = 'c1'): Record<string, unknown> => ({
    type: 'message', conversation_id: conv, message_id: `M${seq}`, seq, sender_id: 'bob', body: `b${seq}`, created_at: 'T',
  });

  it('a gap is filled from history after the last contiguous seq, then delivered in order, once', async () => {
    const c = client();
    const got: number[] = [];
    c.on('message', (x: Message) => got.push(x.seq));
    const ws = await connected(c);
    server.history.set('c1', [1, 2, 3, 4].map((s) => ({ ...m(s), type: undefined, client_msg_id: `x${s}` })));
    ws.frame(m(1));
    ws.frame(m(4));
    ws.frame(m(4));
    await tick(10);
    expect(got).toEqual([1, 2, 3, 4]);
    const asked = server.calls.filter((x) => x.url.includes('/messages'));
    expect(asked.length).toBe(1);
    expect(asked[0]!.url).toContain('after_seq=1');
  });

  it('edits, deletes and reactions take seqs: live and from history they pass the cursor, in order, once', async () => {
    const c = client();
    const got: string[] = [];
    c.on('message', (x: Message) => got.push(`m${x.seq}`));
    c.on('event', (x: MessageEvent) => got.push(`${x.kind}${x.seq}`));
    const ws = await connected(c);
    const ev = (seq: number, kind: string): Record<string, unknown> => ({
      type: 'event', conversation_id: 'c1', event_id: `E${seq}`, seq, sender_id: 'bob', kind, message_id: 'M1', created_at: 'T',
    });
    // 3 (a reaction) is lost live: history with events fills it.
    server.history.set('c1', [
      { ...m(1), type: undefined },
      { ...ev(2, 'edit'), type: undefined, body: 'new' },
      { ...ev(3, 'reaction'), type: undefined, emoji: 'x' },
      { ...m(4), type: undefined },
    ]);
    ws.frame(m(1));
    ws.frame({ ...ev(2, 'edit'), body: 'new' });
    ws.frame(m(4));
    await tick(10);
    expect(got).toEqual(['m1', 'edit2', 'reaction3', 'm4']);
    expect(c.cursor('c1')).toBe(4);
    const asked = server.calls.filter((x) => x.url.includes('/messages'));
    expect(asked.length).toBe(1);
    expect(asked[0]!.url).toContain('events=true');
  });

  it('history trailing live delivery is asked again until it has the gap', async () => {
    const c = client();
    const got: number[] = [];
    c.on('message', (x: Message) => got.push(x.seq));
    const ws = await connected(c);
    ws.frame(m(1));
    ws.frame(m(3));
    await tick(10);
    expect(got).toEqual([1]);
    server.history.set('c1', [{ ...m(2), type: undefined }]);
    await tick(2_000);
    expect(got).toEqual([1, 2, 3]);
  });

  it('after a reconnect, only conversations whose last_seq is ahead are resynced', async () => {
    const storage = new MemoryStorage();
    storage.setItem('switchboard:alice:cursors', JSON.stringify({ c1: { c: 5, d: 5, r: 0 }, c2: { c: 7, d: 7, r: 0 } }));
    server.conversations = [{ id: 'c1', last_seq: 5 }, { id: 'c2', last_seq: 9 }];
    server.history.set('c2', [8, 9].map((s) => ({ ...m(s, 'c2'), type: undefined })));
    const c = client({ storage });
    const got: string[] = [];
    c.on('message', (x: Message) => got.push(`${x.conversation_id}:${x.seq}`));
    const ws = await connected(c);
    await tick(10);
    expect(got).toEqual(['c2:8', 'c2:9']);
    const asked = server.calls.filter((x) => x.url.includes('/messages')).map((x) => x.url);
    expect(asked.length).toBe(1);
    expect(asked[0]).toContain('/c2/messages?after_seq=7');
    // delivered is sent for the advanced cursor; the cursor is persisted.
    await tick(500);
    expect(ws.sentOfType('delivered')).toEqual([{ type: 'delivered', conversation_id: 'c2', seq: 9 }]);
    expect(JSON.parse(storage.getItem('switchboard:alice:cursors')!).c2.c).toBe(9);
  });

  it('a server last_seq that stays below the local cursor is a store reset: said, and the cache dropped', async () => {
    const storage = new MemoryStorage();
    storage.setItem('switchboard:alice:cursors', JSON.stringify({ c1: { c: 50, d: 50, r: 50 } }));
    server.conversations = [{ id: 'c1', last_seq: 2 }];
    server.history.set('c1', [1, 2].map((s) => ({ ...m(s), type: undefined })));
    const c = client({ storage });
    const resets: unknown[] = [];
    const got: number[] = [];
    c.on('reset', (r) => resets.push(r));
    c.on('message', (x: Message) => got.push(x.seq));
    await connected(c);
    await tick(10);
    // Not yet: a store that trails the log looks the same for a moment.
    expect(resets).toEqual([]);
    await tick(10_000);
    expect(resets).toEqual([{ conversation_id: 'c1', server_last_seq: 2, local_cursor: 50 }]);
    expect(got).toEqual([1, 2]);
    expect(c.cursor('c1')).toBe(2);
  });

  it('a server last_seq below the cursor that catches up (the store trailing the log) is not a reset', async () => {
    const storage = new MemoryStorage();
    storage.setItem('switchboard:alice:cursors', JSON.stringify({ c1: { c: 50, d: 50, r: 50 } }));
    server.conversations = [{ id: 'c1', last_seq: 0 }];
    const c = client({ storage });
    const resets: unknown[] = [];
    const got: number[] = [];
    c.on('reset', (r) => resets.push(r));
    c.on('message', (x: Message) => got.push(x.seq));
    await connected(c);
    await tick(3_000);
    server.conversations = [{ id: 'c1', last_seq: 50 }];
    await tick(20_000);
    expect(resets).toEqual([]);
    expect(got).toEqual([]);
    expect(c.cursor('c1')).toBe(50);
  });

  it('markRead sends read now, or at the next hello', async () => {
    const c = client();
    let ws = await connected(c);
    ws.frame(m(1));
    c.markRead('c1');
    expect(ws.sentOfType('read')).toEqual([{ type: 'read', conversation_id: 'c1', seq: 1 }]);
    ws.frame(m(2));
    ws.serverClose(1006);
    c.markRead('c1');
    await tick(1_000);
    ws = FakeSocket.last();
    ws.hello();
    await tick(0);
    expect(ws.sentOfType('read')).toEqual([{ type: 'read', conversation_id: 'c1', seq: 2 }]);
  });
});

describe('tokens', () => {
  it('is asked before connecting and shortly before exp, then sent in-band (refresh): the socket stays', async () => {
    nextToken = () => jwt('alice', 300); // 5 min: refresh 30 s before exp
    const c = client();
    const ws = await connected(c);
    expect(tokenCalls).toBe(1);
    await tick(269_000);
    expect(tokenCalls).toBe(1);
    await tick(1_100);
    expect(tokenCalls).toBe(2);
    const [refresh] = ws.sentOfType('refresh');
    expect(refresh).toBeDefined();
    expect(refresh!.token).not.toBe(new URL(ws.url).searchParams.get('token'));
    ws.frame({ type: 'token_refreshed', expires_at: 'T' });
    await tick(0);
    expect(FakeSocket.instances.length).toBe(1);
    expect(ws.closedByClient).toBeNull();
    expect(c.state).toBe('connected');
  });

  it("the server's token_expiring notice refreshes at once (a background tab's late timer does not matter)", async () => {
    const c = client();
    const ws = await connected(c);
    ws.frame({ type: 'token_expiring', expires_at: 'T' });
    await tick(0);
    expect(tokenCalls).toBe(2);
    expect(ws.sentOfType('refresh').length).toBe(1);
    ws.frame({ type: 'token_expiring', expires_at: 'T' }); // one refresh at a time
    await tick(0);
    expect(ws.sentOfType('refresh').length).toBe(1);
  });

  it('a server without in-band refresh (bad_request) gets a graceful reconnect with the new token', async () => {
    const c = client();
    const seen: StateChange[] = [];
    c.on('state', (s) => seen.push(s));
    const ws = await connected(c);
    ws.frame({ type: 'token_expiring', expires_at: 'T' });
    await tick(0);
    const token = ws.sentOfType('refresh')[0]!.token;
    ws.frame({ type: 'error', code: 'bad_request', message: 'unknown frame type' });
    await tick(0);
    expect(seen[seen.length - 1]).toMatchObject({ state: 'connecting', code: 'token_refresh' });
    expect(ws.closedByClient?.code).toBe(1000);
    expect(FakeSocket.instances.length).toBe(2);
    expect(new URL(FakeSocket.last().url).searchParams.get('token')).toBe(token);
  });

  it('a 4401 close reconnects at once with a new token', async () => {
    const c = client();
    const ws = await connected(c);
    ws.serverClose(4401, 'token expired: get a new token and reconnect');
    await tick(0);
    expect(tokenCalls).toBe(2);
    expect(FakeSocket.instances.length).toBe(2);
    expect(FakeSocket.last().url).not.toBe(ws.url);
  });

  it('4403 (sessions ended): a new token from getToken reconnects; the same token again is terminal', async () => {
    const c = client();
    const seen: StateChange[] = [];
    c.on('state', (s) => seen.push(s));
    const ws = await connected(c);
    const old = new URL(ws.url).searchParams.get('token')!;
    nextToken = () => old; // the app has nothing better
    ws.serverClose(4403, 'sessions ended: sign in again');
    await tick(0);
    expect(seen.map((s) => `${s.state}:${s.code}`)).toEqual([
      'connecting:connect', 'connected:hello', 'connecting:sessions_ended', 'disconnected:unauthorized',
    ]);
    await tick(60_000);
    expect(FakeSocket.instances.length).toBe(1);
  });

  it('failed upgrades (1006, as browsers report a 401) lead to one REST probe, a refresh, then a terminal unauthorized', async () => {
    const c = client();
    const seen: StateChange[] = [];
    c.on('state', (s) => seen.push(s));
    const refuseAll = () => {
      for (const s of FakeSocket.instances) if (s.readyState === 0) {
        server.refused.add(new URL(s.url).searchParams.get('token')!);
        s.serverClose(1006);
      }
    };
    const p = c.connect();
    for (let i = 0; i < 20 && c.state !== 'disconnected'; i++) {
      await tick(0);
      refuseAll();
      await tick(25_000);
    }
    await expect(p).rejects.toMatchObject({ code: 'unauthorized' });
    expect(c.state).toBe('disconnected');
    expect(seen[seen.length - 1]).toMatchObject({ state: 'disconnected', code: 'unauthorized' });
    expect(tokenCalls).toBe(2); // the first token, and one refresh after the refusal
    const probes = server.calls.filter((x) => x.url.includes('/conversations?limit=1'));
    expect(probes.length).toBe(2);
    const sockets = FakeSocket.instances.length;
    await tick(120_000);
    expect(FakeSocket.instances.length).toBe(sockets); // not a loop
  });

  it('failed upgrades with a good token are an outage: keep retrying', async () => {
    const c = client();
    void c.connect();
    for (let i = 0; i < 6; i++) {
      await tick(0);
      for (const s of FakeSocket.instances) if (s.readyState === 0) s.serverClose(1006);
      await tick(25_000);
    }
    expect(c.state).toBe('connecting');
    expect(tokenCalls).toBe(1);
    expect(FakeSocket.instances.length).toBeGreaterThanOrEqual(6);
  });
});

describe('liveness', () => {
  it('hidden-tab timers (firing once a minute) cause no reconnect while pings are answered', async () => {
    const c = client({ ping: { intervalMs: 20_000, timeoutMs: 10_000 } });
    const ws = await connected(c);
    // The page answers pongs at once (network events are not throttled), but timers run late:
    // advance a minute at a time, answering every ping as it is written.
    const sendOrig = ws.send.bind(ws);
    ws.send = (data: string) => {
      sendOrig(data);
      if (JSON.parse(data).type === 'ping') queueMicrotask(() => ws.frame({ type: 'pong' }));
    };
    for (let i = 0; i < 10; i++) await tick(60_000);
    expect(ws.sentOfType('ping').length).toBeGreaterThan(5);
    expect(FakeSocket.instances.length).toBe(1);
    expect(c.state).toBe('connected');
  });

  it('a ping unanswered for the bound ends the socket and reconnects', async () => {
    const c = client({ ping: { intervalMs: 20_000, timeoutMs: 10_000 } });
    const seen: StateChange[] = [];
    c.on('state', (s) => seen.push(s));
    await connected(c);
    await tick(20_000);
    expect(c.state).toBe('connected');
    await tick(10_000);
    expect(seen[seen.length - 1]).toMatchObject({ state: 'connecting', code: 'ping_timeout' });
    await tick(1_000);
    expect(FakeSocket.instances.length).toBe(2);
  });
});

describe('transport fallback (auto)', () => {
  it('upgrades failing while REST answers: one SSE attempt to the same server; it fails too (a dead server), so back to WebSocket, nothing remembered', async () => {
    const storage = new MemoryStorage();
    const c = client({ storage, probeAfterFailures: 2 });
    const transports: unknown[] = [];
    c.on('transport', (t) => transports.push([t.transport, t.trial]));
    void c.connect().catch(() => undefined);
    /** Runs the clock until the client opens another (fake) WebSocket. */
    const nextSocket = async () => {
      const n = FakeSocket.instances.length;
      for (let t = 0; FakeSocket.instances.length === n; t += 50) {
        if (t > 60_000) throw new Error('no new socket');
        await tick(50);
      }
      return FakeSocket.last();
    };
    // Two refused upgrades.
    await tick(0);
    FakeSocket.last().serverClose(1006);
    (await nextSocket()).serverClose(1006);
    const ws = await nextSocket();
    // The probe answered (the fake REST accepts the token), then the trial went over SSE to
    // the server of the last attempt: the fake deployment has no /sse (404), so it failed.
    const sse = server.calls.filter((call) => new URL(call.url).pathname === '/sse');
    expect(sse.length).toBe(1);
    expect(new URL(sse[0]!.url).host).toBe('chat.test:9001');
    expect(transports).toEqual([
      ['sse', true],
      ['websocket', false],
    ]);
    expect(c.transport).toBe('websocket');
    // Back on WebSocket: the next attempt opened one, and hello works.
    ws.hello();
    await tick(0);
    expect(c.state).toBe('connected');
    expect(await storage.getItem('switchboard:transport:http://chat.test')).toBeNull();
    c.close();
  });

  it("transport: 'websocket' never tries SSE", async () => {
    const c = client({ transport: 'websocket', probeAfterFailures: 1 });
    void c.connect().catch(() => undefined);
    for (let i = 0; i < 3; i++) {
      await tick(0);
      FakeSocket.last().serverClose(1006);
      await tick(30_000);
    }
    expect(server.calls.some((call) => new URL(call.url).pathname === '/sse')).toBe(false);
    expect(c.transport).toBe('websocket');
    c.close();
  });
});
