// The SDK (its built ESM output, as a user imports it) in Node 20 against the REAL stack.
//
//   BASE_URL=http://127.0.0.1:8080 SERVER_PIDS='{"socket-1-9001":123,...}' JWT_SECRET=... \
//     node --experimental-websocket --test --test-concurrency=1 test/integration/*.test.mjs
//
// clients/js/test.sh starts the stack (target/debug/devstack) and sets these. The tests run in
// file order: the ones that kill socket servers (SIGTERM, then SIGKILL) come last, and each
// uses fresh user names so the runs do not see each other. ws-blocked.test.mjs runs after this
// file and kills two more servers: the stack has five.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryStorage } from '../../dist/index.js';
import { SERVER_PIDS, killServer, makeClient, mintToken, range, recorder, seqsOf, until, userOf } from './helpers.mjs';

const user = userOf('');

test('two users chat: send() resolves to the server answer, messages arrive once and in order', { timeout: 30_000 }, async () => {
  const alice = makeClient(user('alice'));
  const bob = makeClient(user('bob'));
  const bobGot = recorder(bob);
  const aliceGot = recorder(alice);
  await Promise.all([alice.connect(), bob.connect()]);
  assert.equal(alice.state, 'connected');
  assert.equal(alice.userId, user('alice'));
  const conv = await alice.createDirect(user('bob'));
  const acks = [];
  for (let i = 1; i <= 5; i++) acks.push(await alice.send(conv.id, `hi ${i}`));
  assert.deepEqual(acks.map((a) => a.seq), [1, 2, 3, 4, 5]);
  for (const a of acks) assert.match(a.message_id, /^[0-9A-Z]{26}$/);
  await until('bob has 5', () => bobGot(conv.id).length === 5);
  assert.deepEqual(seqsOf(bobGot(conv.id)), [1, 2, 3, 4, 5]);
  assert.deepEqual(bobGot(conv.id).map((m) => m.body), ['hi 1', 'hi 2', 'hi 3', 'hi 4', 'hi 5']);
  // The sender's own messages are in its ordered stream too (from `sent`).
  assert.deepEqual(seqsOf(aliceGot(conv.id)), [1, 2, 3, 4, 5]);
  assert.deepEqual(alice.outbox(), []);
});

test('two connect() calls give one socket and one hello', { timeout: 20_000 }, async () => {
  let sockets = 0;
  class CountingWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      sockets++;
    }
  }
  const c = makeClient(user('carol'), { WebSocket: CountingWebSocket });
  let hellos = 0;
  c.on('hello', () => hellos++);
  const p1 = c.connect();
  const p2 = c.connect();
  await Promise.resolve();
  const p3 = c.connect();
  await Promise.all([p1, p2, p3]);
  await c.connect();
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(sockets, 1);
  assert.equal(hellos, 1);
  c.disconnect();
  assert.equal(c.state, 'disconnected');
});

test('a gap in live delivery is filled from history after the last contiguous seq', { timeout: 30_000 }, async () => {
  // Bob's "network" loses the message frame of seq 3 (as a server drops a late frame).
  let dropped = 0;
  class LossyWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener('message', (ev) => {
        const f = JSON.parse(ev.data);
        if (f.type === 'message' && f.seq === 3 && dropped === 0) {
          dropped++;
          ev.stopImmediatePropagation();
        }
      });
    }
  }
  const historyAsks = [];
  const fetchSpy = (url, init) => {
    if (String(url).includes('/messages?')) historyAsks.push(String(url));
    return fetch(url, init);
  };
  const alice = makeClient(user('alice2'));
  const bob = makeClient(user('bob2'), { WebSocket: LossyWebSocket, fetch: fetchSpy });
  const bobGot = recorder(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  const conv = await alice.createDirect(user('bob2'));
  for (let i = 1; i <= 5; i++) await alice.send(conv.id, `m${i}`);
  await until('bob has 5', () => bobGot(conv.id).length === 5);
  assert.equal(dropped, 1, 'the lossy socket dropped seq 3');
  assert.deepEqual(seqsOf(bobGot(conv.id)), [1, 2, 3, 4, 5]);
  assert.deepEqual(bobGot(conv.id).map((m) => m.body), ['m1', 'm2', 'm3', 'm4', 'm5']);
  assert.ok(
    historyAsks.some((u) => u.includes(`/conversations/${conv.id}/messages?after_seq=2`)),
    `history asked after seq 2: ${historyAsks.join(' ')}`,
  );
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(bobGot(conv.id).length, 5, 'nothing delivered twice');
});

test('reload with unsent messages: the outbox is stored, resent by the next client, confirmed once', { timeout: 30_000 }, async () => {
  const storage = new MemoryStorage();
  const bob = makeClient(user('bob3'));
  const bobGot = recorder(bob);
  await bob.connect();
  const setup = makeClient(user('alice3'));
  const conv = await setup.createDirect(user('bob3'));
  // Page 1: never connected; two sends go to the outbox only.
  const page1 = makeClient(user('alice3'), { storage });
  page1.send(conv.id, 'written offline 1');
  page1.send(conv.id, 'written offline 2');
  await until('two entries stored', async () => page1.outbox().length === 2);
  const ids = page1.outbox().map((e) => e.client_msg_id);
  page1.close();
  // Page 2: same storage, loads the outbox, sends it at hello.
  const page2 = makeClient(user('alice3'), { storage });
  const confirmed = [];
  page2.on('sent', (e) => confirmed.push(e.entry.client_msg_id));
  await page2.load();
  assert.deepEqual(page2.outbox().map((e) => e.client_msg_id), ids);
  await page2.connect();
  await until('both confirmed', () => confirmed.length === 2);
  assert.deepEqual([...confirmed].sort(), [...ids].sort());
  await until('bob has both', () => bobGot(conv.id).length === 2);
  assert.deepEqual(bobGot(conv.id).map((m) => m.body).sort(), ['written offline 1', 'written offline 2']);
  assert.deepEqual(page2.outbox(), []);
  // Stored once each.
  const rows = await until('both stored', async () => {
    const r = await page2.history(conv.id);
    return r.length >= 2 && r;
  });
  assert.deepEqual(rows.map((r) => r.client_msg_id).sort(), [...ids].sort());
});

test('receipts, typing and presence', { timeout: 30_000 }, async () => {
  const alice = makeClient(user('alice4'));
  const bob = makeClient(user('bob4'));
  const receipts = [];
  const typing = [];
  const presence = [];
  alice.on('receipt', (r) => receipts.push(r));
  bob.on('typing', (t) => typing.push(t));
  alice.on('presence', (p) => presence.push(p));
  await Promise.all([alice.connect(), bob.connect()]);
  const conv = await alice.createDirect(user('bob4'));
  // bob accepts (asks for the same conversation), so presence flows under either policy.
  await bob.createDirect(user('alice4'));
  const ack = await alice.send(conv.id, 'read me');
  await until('delivered receipt', () => receipts.some((r) => r.kind === 'delivered' && r.seq === ack.seq && r.user_id === user('bob4')));
  await until('bob has it', () => bob.cursor(conv.id) === ack.seq);
  bob.markRead(conv.id);
  await until('read receipt', () => receipts.some((r) => r.kind === 'read' && r.seq === ack.seq));
  assert.equal(alice.typing(conv.id), true);
  assert.equal(alice.typing(conv.id), false, 'throttled');
  await until('typing', () => typing.some((t) => t.conversation_id === conv.id && t.user_id === user('alice4')));
  const [p] = await alice.presence([user('bob4')]);
  assert.equal(p.status, 'online');
  bob.disconnect();
  await until('offline presence', () => presence.some((x) => x.user_id === user('bob4') && x.status === 'offline'));
});

test('a server last_seq that stays below the local cursor is reported as a store reset', { timeout: 40_000 }, async () => {
  const storage = new MemoryStorage();
  const alice = makeClient(user('alice5'));
  await alice.connect();
  const conv = await alice.createDirect(user('bob5'));
  await alice.send(conv.id, 'only one');
  await until('stored', async () => (await alice.history(conv.id)).length === 1);
  // A previous life of this device had seen 40 messages there.
  storage.setItem(`switchboard:${user('alice5')}:cursors`, JSON.stringify({ [conv.id]: { c: 40, d: 40, r: 40 } }));
  const again = makeClient(user('alice5'), { storage });
  const resets = [];
  const got = recorder(again);
  again.on('reset', (r) => resets.push(r));
  await again.connect();
  await until('reset reported', () => resets.length === 1);
  assert.deepEqual(resets[0], { conversation_id: conv.id, server_last_seq: 1, local_cursor: 40 });
  await until('redelivered from the store', () => got(conv.id).length === 1);
  assert.equal(again.cursor(conv.id), 1);
});

test('a token that expires mid-session is refreshed in-band before exp: same socket, the session goes on past exp', { timeout: 60_000 }, async () => {
  let calls = 0;
  let sockets = 0;
  const frames = [];
  class WatchedWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      sockets++;
      this.addEventListener('message', (ev) => frames.push(JSON.parse(ev.data).type));
    }
  }
  const alice = makeClient(user('alice6'), {
    // 20 s tokens: refreshed 5 s before exp (the server's notice comes 2 s before).
    getToken: () => {
      calls++;
      return mintToken(user('alice6'), { lifetimeS: 20 });
    },
    WebSocket: WatchedWebSocket,
  });
  const bob = makeClient(user('bob6'));
  const bobGot = recorder(bob);
  const states = [];
  alice.on('state', (s) => states.push(`${s.state}:${s.code}`));
  await Promise.all([alice.connect(), bob.connect()]);
  const conv = await alice.createDirect(user('bob6'));
  await alice.send(conv.id, 'before');
  const t0 = Date.now();
  await until('token_refreshed', () => frames.includes('token_refreshed'), 25_000);
  assert.ok(calls >= 2, `getToken called ${calls} times`);
  // Past the first token's exp (20 s): still the same socket.
  await new Promise((r) => setTimeout(r, Math.max(0, 23_000 - (Date.now() - t0))));
  assert.equal(sockets, 1, `sockets opened: ${sockets}; states: ${states.join(' ')}`);
  assert.equal(alice.state, 'connected');
  assert.deepEqual(states, ['connecting:connect', 'connected:hello']);
  await alice.send(conv.id, 'after');
  await until('bob has both', () => bobGot(conv.id).length === 2);
  assert.deepEqual(bobGot(conv.id).map((m) => m.body), ['before', 'after']);
});

test('an expired token that getToken() cannot fix is terminal unauthorized, not a loop', { timeout: 60_000 }, async () => {
  let calls = 0;
  const c = makeClient(user('mallory'), {
    getToken: () => {
      calls++;
      return mintToken(user('mallory'), { lifetimeS: 60, iatOffsetS: -3600 });
    },
    reconnect: { minDelayMs: 100, maxDelayMs: 500 },
  });
  const states = [];
  c.on('state', (s) => states.push(s));
  await assert.rejects(c.connect(), (e) => e.code === 'unauthorized');
  assert.equal(c.state, 'disconnected');
  assert.equal(states.at(-1).code, 'unauthorized');
  const n = calls;
  await new Promise((r) => setTimeout(r, 2000));
  assert.equal(calls, n, 'no more attempts');
  assert.ok(calls <= 3, `getToken called ${calls} times`);
});

test('a 1012 restart: the client waits a spread-out delay, reconnects through the registry, and goes on', { timeout: 40_000 }, async () => {
  const alice = makeClient(user('alice7'));
  const bob = makeClient(user('bob7'));
  const bobGot = recorder(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  const conv = await alice.createDirect(user('bob7'));
  await alice.send(conv.id, 'one');
  const states = [];
  const retries = [];
  alice.on('state', (s) => states.push(s));
  alice.on('retry', (r) => retries.push(r));
  const first = alice.serverId;
  killServer(first, 'SIGTERM');
  await until('alice reconnected elsewhere', () => alice.state === 'connected' && alice.serverId && alice.serverId !== first, 30_000);
  const restart = states.find((s) => s.state === 'connecting');
  assert.equal(restart.closeCode, 1012);
  assert.equal(restart.code, 'server_restart');
  assert.equal(retries[0].code, 'server_restart');
  assert.ok(retries[0].delayMs < 5000);
  await alice.send(conv.id, 'two');
  await until('bob has both', () => bobGot(conv.id).length === 2, 30_000);
  assert.deepEqual(seqsOf(bobGot(conv.id)), [1, 2]);
  delete SERVER_PIDS[first];
});

test('kill -9 of the sender\'s socket server mid-burst of 200: every send confirmed once, the receiver sees 1..200 once and in order', { timeout: 90_000 }, async () => {
  const N = 200;
  const alice = makeClient(user('alice8'), { reconnect: { minDelayMs: 200, maxDelayMs: 2000 } });
  const bob = makeClient(user('bob8'));
  const bobGot = recorder(bob);
  const aliceGot = recorder(alice);
  await Promise.all([alice.connect(), bob.connect()]);
  const conv = await alice.createDirect(user('bob8'));
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
  // Exactly once: 200 distinct ids, each confirmed by one `sent` event, with 200 distinct seqs 1..200.
  assert.equal(new Set(acks.map((a) => a.client_msg_id)).size, N);
  assert.equal(sentEvents.size, N);
  assert.ok([...sentEvents.values()].every((n) => n === 1), 'a sent event fired twice');
  assert.deepEqual(acks.map((a) => a.seq).sort((a, b) => a - b), range(1, N));
  assert.deepEqual(alice.outbox(), []);
  await until(`bob has ${N}`, () => bobGot(conv.id).length >= N, 60_000);
  await new Promise((r) => setTimeout(r, 1000));
  assert.deepEqual(seqsOf(bobGot(conv.id)), range(1, N));
  const bodies = bobGot(conv.id).map((m) => m.body);
  assert.equal(new Set(bodies).size, N, 'a body delivered twice');
  assert.deepEqual(seqsOf(aliceGot(conv.id)), range(1, N));
  // The store has each once.
  await until('stored', async () => (await alice.history(conv.id, { limit: 1000 })).length === N, 30_000);
  const rows = await alice.history(conv.id, { limit: 1000 });
  assert.equal(new Set(rows.map((r) => r.client_msg_id)).size, N);
  delete SERVER_PIDS[victim];
});
