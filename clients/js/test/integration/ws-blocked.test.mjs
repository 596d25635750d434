// The SDK behind a REAL proxy that refuses WebSocket upgrades: the stack's hard cases over the
// HTTP fallback (Server-Sent Events down, POST up), reached on its own.
//
// NO_WEBSOCKET_URL is a second nginx in front of the stack (devstack's
// DEVSTACK_NO_WEBSOCKET_PORT; config in test-support/src/no_websocket.conf.template): it answers
// 403 to every request carrying `Upgrade: websocket`, passes REST, the event streams and the
// POSTs, and rewrites the registry's socket URLs to its per-server tunnels (/ws/PORT, from which
// the client derives /sse/PORT). Clients here are given only that URL and the default
// transport (`auto`): each must see its upgrades refused, ask the REST API whether its token is
// the problem, try SSE on the same server, and stay there. Then: chat both ways with receipts,
// typing and presence; a token expiring mid-session; a 1012 restart; kill -9 of the sender's
// socket server mid-burst of 200.
//
// Runs last (test.sh runs the files in name order; this one kills two socket servers after
// stack.test.mjs killed two: the stack has five).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  NO_WEBSOCKET_URL,
  SERVER_PIDS,
  killServer,
  makeClient as makeStackClient,
  mintToken,
  range,
  recorder,
  seqsOf,
  sleep,
  until,
  userOf,
} from './helpers.mjs';

const skip = NO_WEBSOCKET_URL ? false : 'NO_WEBSOCKET_URL is not set (clients/js/test.sh starts the proxy and sets it)';
const PROXY_HOST = NO_WEBSOCKET_URL ? new URL(NO_WEBSOCKET_URL).host : '';
const user = userOf('nows');

/** Reads an event stream's `data:` frames into `frames` (their `type`s). */
async function readFrames(body, frames) {
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for await (const chunk of body) {
      buffer += decoder.decode(chunk, { stream: true });
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (!line.startsWith('data:')) continue;
        try {
          const type = JSON.parse(line.slice(5)).type;
          if (type) frames.push(type);
        } catch {
          /* a non-JSON event (session, ping) */
        }
      }
    }
  } catch {
    /* the stream was aborted or broke: the client sees that itself */
  }
}

/**
 * A client on the proxy, its network observed (not changed): every WebSocket it opens, every
 * event stream and POST of the fallback (with the HTTP status), the frames on its streams, its
 * transport changes and states.
 */
function makeClient(userId, opts = {}) {
  const seen = { wsAttempts: [], streams: [], posts: [], frames: [], transports: [], states: [] };
  class ObservedWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      seen.wsAttempts.push(new URL(String(url)));
    }
  }
  const observedFetch = async (url, init = {}) => {
    const res = await fetch(url, init);
    const u = new URL(String(url));
    if (u.pathname.startsWith('/sse/')) {
      const row = { host: u.host, path: u.pathname, status: res.status };
      if ((init.method ?? 'GET') === 'POST') {
        seen.posts.push(row);
      } else {
        seen.streams.push(row);
        if (res.ok && res.body) {
          const [mine, theirs] = res.body.tee();
          void readFrames(mine, seen.frames);
          return new Response(theirs, { status: res.status, statusText: res.statusText, headers: res.headers });
        }
      }
    }
    return res;
  };
  const c = makeStackClient(userId, { baseUrl: NO_WEBSOCKET_URL, WebSocket: ObservedWebSocket, fetch: observedFetch, ...opts });
  c.on('transport', (t) => seen.transports.push([t.transport, t.trial]));
  c.on('state', (s) => seen.states.push(`${s.state}:${s.code}`));
  c.seen = seen;
  return c;
}

/** `c` connected over SSE after its WebSocket upgrades were refused, everything through the proxy. */
function assertFellBack(c) {
  const { seen } = c;
  assert.equal(c.transport, 'sse');
  assert.deepEqual(seen.transports, [['sse', true]], 'one trial of SSE, which worked');
  assert.ok(seen.wsAttempts.length >= 2, `${seen.wsAttempts.length} upgrades tried before the fallback`);
  for (const u of seen.wsAttempts) {
    assert.equal(u.host, PROXY_HOST, `a WebSocket went around the proxy: ${u}`);
    assert.match(u.pathname, /^\/ws\/\d+$/);
  }
  const opened = seen.streams.filter((s) => s.status === 200);
  assert.ok(opened.length >= 1, `no event stream opened: ${JSON.stringify(seen.streams)}`);
  for (const s of [...seen.streams, ...seen.posts]) assert.equal(s.host, PROXY_HOST, `SSE went around the proxy: ${JSON.stringify(s)}`);
}

test('the proxy refuses upgrades and passes the rest: the registry names its tunnels', { skip, timeout: 10_000 }, async () => {
  const res = await fetch(`${NO_WEBSOCKET_URL}/api/v1/socket-server`);
  assert.equal(res.status, 200);
  const { url } = await res.json();
  assert.match(url, new RegExp(`^ws://${PROXY_HOST.replace(/\./g, '\\.')}/ws/\\d+$`));
  const upgrade = await new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => resolve('open');
    ws.onerror = () => resolve('refused');
  });
  assert.equal(upgrade, 'refused');
});

test('behind the proxy, clients fall back to SSE by themselves; chat both ways, once and in order', { skip, timeout: 60_000 }, async () => {
  const alice = makeClient(user('alice'));
  const bob = makeClient(user('bob'));
  const aliceGot = recorder(alice);
  const bobGot = recorder(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  assertFellBack(alice);
  assertFellBack(bob);
  const conv = await alice.createDirect(user('bob'));
  const up = await Promise.all(range(1, 30).map((i) => alice.send(conv.id, `a${i}`)));
  assert.deepEqual(up.map((a) => a.seq).sort((a, b) => a - b), range(1, 30));
  const down = await Promise.all(range(1, 30).map((i) => bob.send(conv.id, `b${i}`)));
  assert.deepEqual(down.map((a) => a.seq).sort((a, b) => a - b), range(31, 60));
  await until('both have 60', () => aliceGot(conv.id).length >= 60 && bobGot(conv.id).length >= 60);
  await sleep(300);
  assert.deepEqual(seqsOf(aliceGot(conv.id)), range(1, 60));
  assert.deepEqual(seqsOf(bobGot(conv.id)), range(1, 60));
  assert.deepEqual(
    bobGot(conv.id).map((m) => m.body),
    [...aliceGot(conv.id).map((m) => m.body)],
    'both saw the same messages in the same order',
  );
  assert.deepEqual(alice.outbox(), []);
  assert.deepEqual(bob.outbox(), []);
  assert.ok(alice.seen.posts.length > 0 && alice.seen.posts.every((p) => p.status < 300), 'POSTs through the proxy');
});

test('behind the proxy: receipts, typing and presence', { skip, timeout: 40_000 }, async () => {
  const alice = makeClient(user('alice2'));
  const bob = makeClient(user('bob2'));
  const receipts = [];
  const typing = [];
  const presence = [];
  alice.on('receipt', (r) => receipts.push(r));
  bob.on('typing', (t) => typing.push(t));
  alice.on('presence', (p) => presence.push(p));
  await Promise.all([alice.connect(), bob.connect()]);
  assertFellBack(alice);
  assertFellBack(bob);
  const conv = await alice.createDirect(user('bob2'));
  // bob accepts (asks for the same conversation), so presence flows under either policy.
  await bob.createDirect(user('alice2'));
  const ack = await alice.send(conv.id, 'read me');
  await until('delivered receipt', () => receipts.some((r) => r.kind === 'delivered' && r.seq === ack.seq && r.user_id === user('bob2')));
  await until('bob has it', () => bob.cursor(conv.id) === ack.seq);
  bob.markRead(conv.id);
  await until('read receipt', () => receipts.some((r) => r.kind === 'read' && r.seq === ack.seq));
  assert.equal(alice.typing(conv.id), true);
  assert.equal(alice.typing(conv.id), false, 'throttled');
  await until('typing', () => typing.some((t) => t.conversation_id === conv.id && t.user_id === user('alice2')));
  const [p] = await alice.presence([user('bob2')]);
  assert.equal(p.status, 'online');
  bob.disconnect();
  await until('offline presence', () => presence.some((x) => x.user_id === user('bob2') && x.status === 'offline'));
});

test('behind the proxy: a token that expires mid-session is refreshed in-band, the same event stream goes on past exp', { skip, timeout: 60_000 }, async () => {
  let calls = 0;
  let firstExpMs;
  const alice = makeClient(user('alice3'), {
    // 20 s tokens: refreshed 5 s before exp (the server's notice comes 2 s before).
    getToken: () => {
      calls++;
      const token = mintToken(user('alice3'), { lifetimeS: 20 });
      firstExpMs ??= JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp * 1000;
      return token;
    },
  });
  const bob = makeClient(user('bob3'));
  const bobGot = recorder(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  assertFellBack(alice);
  const statesAtHello = alice.seen.states.length;
  const streamsAtHello = alice.seen.streams.length;
  const conv = await alice.createDirect(user('bob3'));
  await alice.send(conv.id, 'before');
  await until('token_refreshed', () => alice.seen.frames.includes('token_refreshed'), 25_000);
  assert.ok(calls >= 2, `getToken called ${calls} times`);
  // Past the first token's exp: still the same stream, no state change since the hello.
  await sleep(Math.max(0, firstExpMs + 3_000 - Date.now()));
  assert.equal(alice.state, 'connected');
  assert.deepEqual(alice.seen.states.slice(statesAtHello), [], 'no reconnect');
  assert.equal(alice.seen.streams.length, streamsAtHello, 'no new event stream');
  await alice.send(conv.id, 'after');
  await until('bob has both', () => bobGot(conv.id).length === 2);
  assert.deepEqual(bobGot(conv.id).map((m) => m.body), ['before', 'after']);
  // The POSTs after the refresh carried the new token (else the server would have refused them).
  assert.ok(alice.seen.posts.every((p) => p.status < 300), JSON.stringify(alice.seen.posts.filter((p) => p.status >= 300)));
});

test('behind the proxy: a 1012 restart; the client waits a spread-out delay, reconnects through the registry over SSE, and goes on', { skip, timeout: 60_000 }, async () => {
  const alice = makeClient(user('alice4'));
  const bob = makeClient(user('bob4'));
  const bobGot = recorder(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  assertFellBack(alice);
  const conv = await alice.createDirect(user('bob4'));
  await alice.send(conv.id, 'one');
  const states = [];
  const retries = [];
  alice.on('state', (s) => states.push(s));
  alice.on('retry', (r) => retries.push(r));
  const first = alice.serverId;
  const streamsBefore = alice.seen.streams.length;
  killServer(first, 'SIGTERM');
  await until('alice reconnected elsewhere', () => alice.state === 'connected' && alice.serverId && alice.serverId !== first, 40_000);
  const restart = states.find((s) => s.state === 'connecting');
  assert.equal(restart.closeCode, 1012, `the SSE session ended with the server's close code: ${JSON.stringify(restart)}`);
  assert.equal(restart.code, 'server_restart');
  assert.equal(retries[0].code, 'server_restart');
  assert.ok(retries[0].delayMs < 5000);
  assert.equal(alice.transport, 'sse');
  const port = first.split('-').at(-1);
  const later = alice.seen.streams.slice(streamsBefore).filter((s) => s.status === 200);
  assert.ok(later.length >= 1 && later.every((s) => s.path !== `/sse/${port}`), `reconnected over SSE elsewhere: ${JSON.stringify(later)}`);
  await alice.send(conv.id, 'two');
  await until('bob has both', () => bobGot(conv.id).length === 2, 30_000);
  assert.deepEqual(seqsOf(bobGot(conv.id)), [1, 2]);
  delete SERVER_PIDS[first];
});

test("behind the proxy: kill -9 of the sender's socket server mid-burst of 200: every send confirmed once, the receiver sees 1..200 once and in order", { skip, timeout: 90_000 }, async () => {
  const N = 200;
  const alice = makeClient(user('alice5'), { reconnect: { minDelayMs: 200, maxDelayMs: 2000 } });
  const bob = makeClient(user('bob5'));
  const bobGot = recorder(bob);
  const aliceGot = recorder(alice);
  await Promise.all([alice.connect(), bob.connect()]);
  assertFellBack(alice);
  assertFellBack(bob);
  const conv = await alice.createDirect(user('bob5'));
  const resets = [];
  alice.on('reset', (r) => resets.push(r));
  bob.on('reset', (r) => resets.push(r));
  const sentEvents = new Map();
  alice.on('sent', (e) => sentEvents.set(e.entry.client_msg_id, (sentEvents.get(e.entry.client_msg_id) ?? 0) + 1));
  const victim = alice.serverId;
  const promises = [];
  for (let i = 1; i <= N / 2; i++) promises.push(alice.send(conv.id, `burst ${i}`));
  await until('some confirmed', () => sentEvents.size >= 10);
  killServer(victim, 'SIGKILL');
  for (let i = N / 2 + 1; i <= N; i++) promises.push(alice.send(conv.id, `burst ${i}`));
  const acks = await Promise.all(promises);
  assert.ok(alice.serverId !== victim, 'alice moved to another server');
  assert.equal(alice.transport, 'sse', `transport changes: ${JSON.stringify(alice.seen.transports)}`);
  // Exactly once: 200 distinct ids, each confirmed by one `sent` event, with 200 distinct seqs 1..200.
  assert.equal(new Set(acks.map((a) => a.client_msg_id)).size, N);
  assert.equal(sentEvents.size, N);
  assert.ok([...sentEvents.values()].every((n) => n === 1), 'a sent event fired twice');
  assert.deepEqual(acks.map((a) => a.seq).sort((a, b) => a - b), range(1, N));
  assert.deepEqual(alice.outbox(), []);
  await until(`bob has ${N}`, () => bobGot(conv.id).length >= N, 60_000);
  await sleep(1000);
  assert.deepEqual(seqsOf(bobGot(conv.id)), range(1, N));
  const bodies = bobGot(conv.id).map((m) => m.body);
  assert.equal(new Set(bodies).size, N, 'a body delivered twice');
  // The store trails the sequencer (it is written from the log): a conversation's stored
  // last_seq below the cursor just after a reconnect is that lag, not a reset of the store.
  assert.deepEqual(resets, [], 'no store reset reported');
  assert.deepEqual(seqsOf(aliceGot(conv.id)), range(1, N));
  // The store has each once.
  await until('stored', async () => (await alice.history(conv.id, { limit: 1000 })).length === N, 30_000);
  const rows = await alice.history(conv.id, { limit: 1000 });
  assert.equal(new Set(rows.map((r) => r.client_msg_id)).size, N);
  delete SERVER_PIDS[victim];
});
