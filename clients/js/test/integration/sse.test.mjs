// The SDK over the HTTP fallback (Server-Sent Events down, POST up) against the REAL stack,
// as stack.test.mjs runs it (clients/js/test.sh starts it). Runs before stack.test.mjs (file
// order), and kills nothing.
//
// "WebSocket blocked" is what a proxy that refuses upgrades does to a browser: the upgrade
// fails (here: the socket server's own 404 for a path it does not serve, so the failure is a
// real refused HTTP upgrade, not a fake socket), while REST and plain HTTP still work.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import { MemoryStorage, SwitchboardClient, sseUrlOf } from '../../dist/index.js';

const BASE_URL = process.env.BASE_URL;
assert.ok(BASE_URL, "BASE_URL is required (the stack's nginx)");
assert.ok(globalThis.WebSocket, 'run node with --experimental-websocket (Node 20)');

const RUN = randomBytes(3).toString('hex');
const user = (name) => `${name}_sse_${RUN}`;
const clients = [];

after(() => {
  for (const c of clients) c.close();
});

async function devToken(userId) {
  const res = await fetch(`${BASE_URL}/api/v1/dev/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: userId }),
  });
  assert.equal(res.status, 200, `dev token for ${userId}`);
  return (await res.json()).token;
}

function makeClient(userId, opts = {}) {
  const c = new SwitchboardClient({
    baseUrl: BASE_URL,
    getToken: () => devToken(userId),
    storage: new MemoryStorage(),
    ...opts,
  });
  clients.push(c);
  return c;
}

function recorder(c) {
  const byConv = new Map();
  c.on('message', (m) => {
    if (!byConv.has(m.conversation_id)) byConv.set(m.conversation_id, []);
    byConv.get(m.conversation_id).push(m);
  });
  return (conv) => byConv.get(conv) ?? [];
}

async function until(what, fn, timeoutMs = 20_000) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const seqsOf = (msgs) => msgs.map((m) => m.seq);
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** A WebSocket whose upgrades are refused, as behind a proxy that blocks them. */
let blockedUpgrades = 0;
class BlockedWebSocket extends WebSocket {
  constructor(url) {
    const u = new URL(url);
    u.pathname = u.pathname.replace(/\/ws$/, '/upgrades-blocked');
    super(u.toString());
    blockedUpgrades++;
  }
}

test('the SSE URL is the socket URL with http(s) and its ws segment renamed', () => {
  assert.equal(sseUrlOf('ws://127.0.0.1:9001/ws'), 'http://127.0.0.1:9001/sse');
  assert.equal(sseUrlOf('wss://chat.example/ws/10.0.0.5'), 'https://chat.example/sse/10.0.0.5');
  assert.equal(sseUrlOf('wss://chat.example/s/1/ws?x=1'), 'https://chat.example/s/1/sse');
});

test('over SSE (forced): chat both ways with a WebSocket peer, once and in order, through 250 sends', { timeout: 60_000 }, async () => {
  const alice = makeClient(user('alice'), { transport: 'sse' });
  const bob = makeClient(user('bob'));
  const bobGot = recorder(bob);
  const aliceGot = recorder(alice);
  await Promise.all([alice.connect(), bob.connect()]);
  assert.equal(alice.transport, 'sse');
  assert.equal(bob.transport, 'websocket');
  const conv = await alice.createDirect(user('bob'));
  // A burst larger than one POST batch and than the resend pace, all in flight at once.
  const acks = await Promise.all(range(1, 250).map((i) => alice.send(conv.id, `hi ${i}`)));
  assert.deepEqual(acks.map((a) => a.seq).sort((a, b) => a - b), range(1, 250));
  assert.equal(new Set(acks.map((a) => a.message_id)).size, 250);
  await until('bob has 250', () => bobGot(conv.id).length >= 250);
  assert.deepEqual(seqsOf(bobGot(conv.id)), range(1, 250));
  assert.deepEqual(seqsOf(aliceGot(conv.id)), range(1, 250));
  // Down: bob's message reaches alice's event stream.
  await bob.send(conv.id, 'back at you');
  await until('alice has 251', () => aliceGot(conv.id).length === 251);
  assert.equal(aliceGot(conv.id)[250].body, 'back at you');
  assert.deepEqual(alice.outbox(), []);
});

test('over SSE: receipts, typing and presence', { timeout: 30_000 }, async () => {
  const carol = makeClient(user('carol'), { transport: 'sse' });
  const dave = makeClient(user('dave'), { transport: 'sse' });
  await carol.connect();
  const conv = await carol.createDirect(user('dave'));
  const presence = [];
  carol.on('presence', (p) => presence.push(p));
  const receipts = [];
  carol.on('receipt', (r) => receipts.push(r));
  const typing = [];
  carol.on('typing', (t) => typing.push(t));
  await dave.connect();
  await until('dave online', () => presence.some((p) => p.user_id === user('dave') && p.status === 'online'));
  await carol.send(conv.id, 'read me');
  await until('dave has it', async () => (await dave.history(conv.id)).length === 1);
  dave.markRead(conv.id, 1);
  await until('read receipt', () => receipts.some((r) => r.kind === 'read' && r.seq === 1 && r.user_id === user('dave')));
  assert.equal(dave.typing(conv.id), true);
  await until('typing', () => typing.some((t) => t.user_id === user('dave')));
  const [p] = await carol.presence([user('dave')]);
  assert.equal(p.status, 'online');
  dave.disconnect();
  await until('dave offline', () => presence.some((q) => q.user_id === user('dave') && q.status === 'offline'));
});

test('WebSocket upgrades refused: the client falls back to SSE on the same server, remembers it, and a send made meanwhile is delivered once', { timeout: 60_000 }, async () => {
  const storage = new MemoryStorage();
  const erin = makeClient(user('erin'), {
    WebSocket: BlockedWebSocket,
    storage,
    reconnect: { minDelayMs: 100, maxDelayMs: 500 },
  });
  const frank = makeClient(user('frank'));
  const frankGot = recorder(frank);
  await frank.connect();
  const transports = [];
  erin.on('transport', (t) => transports.push(t));
  // Queued before any connection exists: it goes out over whatever transport works.
  const conv = await frank.createDirect(user('erin'));
  const early = erin.send(conv.id, 'sent while no transport worked');
  blockedUpgrades = 0;
  await erin.connect();
  assert.equal(erin.transport, 'sse');
  assert.ok(blockedUpgrades >= 2, `${blockedUpgrades} refused upgrades before the fallback`);
  assert.deepEqual(transports.map((t) => [t.transport, t.trial]), [['sse', true]]);
  const ack = await early;
  assert.equal(ack.seq, 1);
  await until('frank has it', () => frankGot(conv.id).length === 1);
  assert.equal(frankGot(conv.id)[0].body, 'sent while no transport worked');
  // Remembered for this origin: the next client on the same storage starts on SSE and
  // never tries a WebSocket.
  erin.close();
  blockedUpgrades = 0;
  const again = makeClient(user('erin'), { WebSocket: BlockedWebSocket, storage });
  await again.connect();
  assert.equal(again.transport, 'sse');
  assert.equal(blockedUpgrades, 0);
  await again.send(conv.id, 'second');
  await until('frank has 2', () => frankGot(conv.id).length === 2);
  assert.deepEqual(seqsOf(frankGot(conv.id)), [1, 2]);
});
