// What the integration test files share: the stack's settings from the environment (see
// clients/js/test.sh), dev tokens, minted short-lived tokens, clients that are closed after
// the file, message recorders, polling, and killing the socket server a client is on.
//
// Not a test file: test.sh runs test/integration/*.test.mjs only.

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { after } from 'node:test';
import { MemoryStorage, SwitchboardClient } from '../../dist/index.js';

export const BASE_URL = process.env.BASE_URL;
/** The stack's entry through a proxy that refuses WebSocket upgrades (DEVSTACK_NO_WEBSOCKET_PORT). */
export const NO_WEBSOCKET_URL = process.env.NO_WEBSOCKET_URL;
/** Each socket server's id (SB_SERVER_ID) → its pid, so a test can SIGTERM/SIGKILL the one a client is on. */
export const SERVER_PIDS = JSON.parse(process.env.SERVER_PIDS || '{}');
export const JWT_SECRET = process.env.JWT_SECRET;
assert.ok(BASE_URL, "BASE_URL is required (the stack's nginx)");
assert.ok(globalThis.WebSocket, 'run node with --experimental-websocket (Node 20)');

const RUN = randomBytes(3).toString('hex');
const clients = [];

after(() => {
  for (const c of clients) c.close();
});

/** A user name of this run: `<name>_<tag>_<run>` (each run and file sees only its own users). */
export function userOf(tag) {
  return (name) => (tag ? `${name}_${tag}_${RUN}` : `${name}_${RUN}`);
}

export async function devToken(userId, baseUrl = BASE_URL) {
  const res = await fetch(`${baseUrl}/api/v1/dev/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: userId }),
  });
  assert.equal(res.status, 200, `dev token for ${userId}`);
  return (await res.json()).token;
}

/** An HS256 token with the lifetime we want (the dev route's is a day). */
export function mintToken(userId, { lifetimeS = 3600, iatOffsetS = 0 } = {}) {
  assert.ok(JWT_SECRET, 'JWT_SECRET is required for this test');
  const now = Math.floor(Date.now() / 1000) + iatOffsetS;
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: userId, iat: now, exp: now + lifetimeS })}`;
  const sig = createHmac('sha256', JWT_SECRET).update(head).digest('base64url');
  return `${head}.${sig}`;
}

/** A client of `userId` on `opts.baseUrl` (default BASE_URL) with dev tokens and memory storage; closed after the file. */
export function makeClient(userId, opts = {}) {
  const baseUrl = opts.baseUrl ?? BASE_URL;
  const c = new SwitchboardClient({
    baseUrl,
    getToken: () => devToken(userId, baseUrl),
    storage: new MemoryStorage(),
    ...opts,
  });
  clients.push(c);
  return c;
}

/** Collects a client's messages per conversation. */
export function recorder(c) {
  const byConv = new Map();
  c.on('message', (m) => {
    if (!byConv.has(m.conversation_id)) byConv.set(m.conversation_id, []);
    byConv.get(m.conversation_id).push(m);
  });
  return (conv) => byConv.get(conv) ?? [];
}

export async function until(what, fn, timeoutMs = 20_000) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const seqsOf = (msgs) => msgs.map((m) => m.seq);
export const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** Sends `signal` to socket server `serverId` (from SERVER_PIDS). */
export function killServer(serverId, signal) {
  const pid = SERVER_PIDS[serverId];
  assert.ok(pid, `no pid for ${serverId} in SERVER_PIDS ${JSON.stringify(SERVER_PIDS)}`);
  process.kill(pid, signal);
}
