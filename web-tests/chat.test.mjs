// Headless-browser test of the demo web client (nginx/html), against a running stack.
//
//   BASE_URL=http://127.0.0.1:PORT SERVER_PIDS='{"ss-1":123,...}' node chat.test.mjs
//
// BASE_URL is nginx (the page, the registry and the message service); SERVER_PIDS maps every
// socket server's id to its process id, so the test can SIGKILL the server a page is on.
// Run by e2e-tests/tests/e2e/browser.rs, which starts the stack. Optional: CHROMIUM (default
// /usr/bin/chromium), SCREENSHOT (default /tmp/switchboard-demo.png).
//
// The page runs on @switchboard/client (nginx/html/sdk). Two browser contexts sign in as alice
// and bob; alice starts a direct chat; they talk both ways (with typing and read marks); bob
// reloads and sees the history; alice's socket server is killed with SIGKILL, her page
// reconnects through the registry to another server, and they talk both ways again. Then what
// the SDK adds: a message alice sends while offline waits in her outbox and is delivered once
// when she is back; one left unsent in the outbox survives a reload and is delivered once; and
// carol, whose page is forced onto the HTTP fallback (?transport=sse: Server-Sent Events down,
// POST up), chats with bob.

import { chromium } from 'playwright-core';

const BASE_URL = process.env.BASE_URL;
const SERVER_PIDS = JSON.parse(process.env.SERVER_PIDS || '{}');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.SCREENSHOT || '/tmp/switchboard-demo.png';
const TOTAL_TIMEOUT_MS = 110_000;
const STEP_TIMEOUT_MS = 15_000;
const RECONNECT_TIMEOUT_MS = 30_000;

const started = Date.now();
const logs = [];
const log = (msg) => {
  const line = `[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${msg}`;
  console.log(line);
};

let browser;

async function fail(message) {
  console.error(`\nFAIL: ${message}`);
  if (logs.length) {
    console.error('--- browser console (last 60 lines) ---');
    for (const l of logs.slice(-60)) console.error(l);
  }
  console.log('0 passed, 1 failed');
  try { await browser?.close(); } catch (_) { /* ignore */ }
  process.exit(1);
}

const watchdog = setTimeout(
  () => fail(`the whole test took longer than ${TOTAL_TIMEOUT_MS / 1000} s`),
  TOTAL_TIMEOUT_MS,
);

async function step(name, fn) {
  const t0 = Date.now();
  try {
    const out = await fn();
    log(`ok   ${name} (${Date.now() - t0} ms)`);
    return out;
  } catch (e) {
    await fail(`${name}: ${e && e.message ? e.message.split('\n').slice(0, 6).join('\n') : e}`);
  }
}

async function openPage(user, query = '') {
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('console', (m) => logs.push(`${user} console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`${user} PAGE ERROR: ${e.message}`));
  // The demo loads the SDK from this origin only: nothing from elsewhere, ever.
  page.on('request', (r) => {
    if (!r.url().startsWith(BASE_URL) && !/^https?:\/\/127\.0\.0\.1:\d+\/(ws|sse)\b/.test(r.url())) {
      logs.push(`${user} FOREIGN REQUEST: ${r.url()}`);
      foreign.push(r.url());
    }
  });
  await page.goto(`${BASE_URL}/${query}`);
  return page;
}
const foreign = [];

async function signIn(page, user) {
  await page.getByTestId('login-input').fill(user);
  await page.getByTestId('login-button').click();
  await page.locator('[data-testid="connection-status"][data-state="connected"]').waitFor();
  const current = await page.getByTestId('current-user').textContent();
  if (current !== user) throw new Error(`header shows user ${current}, want ${user}`);
  return serverIdOf(page);
}

async function serverIdOf(page) {
  const id = (await page.getByTestId('server-id').textContent()).trim();
  if (!(id in SERVER_PIDS)) throw new Error(`server id label "${id}" is not one of ${Object.keys(SERVER_PIDS)}`);
  return id;
}

function message(page, body) {
  return page.locator('[data-testid="message"]', { hasText: body });
}

// Sends `body` and waits for the server's `sent` (the bubble gets its seq).
async function send(page, body) {
  await page.getByTestId('message-input').fill(body);
  await page.getByTestId('send-button').click();
  await message(page, body).and(page.locator('[data-seq]')).waitFor();
  return Number(await message(page, body).getAttribute('data-seq'));
}

// How many bubbles show `body` (a message shown twice would be a duplicate).
async function countOf(page, body) {
  return page.locator('[data-testid="message"]', { hasText: body }).count();
}

async function goOffline(page) {
  await page.getByTestId('offline-button').click();
  await page.locator('[data-testid="connection-status"][data-state="offline"]').waitFor();
}

// Sends `body` without waiting for `sent`: the bubble shows as sending.
async function sendQueued(page, body) {
  await page.getByTestId('message-input').fill(body);
  await page.getByTestId('send-button').click();
  await message(page, body).and(page.locator('[data-status="sending"]')).waitFor();
}

async function expectOnce(pages, body) {
  for (const page of pages) {
    await message(page, body).and(page.locator('[data-seq]')).waitFor();
    // Give a duplicate the time to show up.
    await page.waitForTimeout(300);
    const n = await countOf(page, body);
    if (n !== 1) throw new Error(`"${body}" shows ${n} times`);
  }
}

async function openChatWith(page, peer) {
  const item = page.locator(`[data-testid="conversation-item"][data-title="${peer}"]`);
  await item.waitFor();
  await item.click();
  await page.locator('[data-testid="chat-title"]', { hasText: peer }).waitFor();
}

async function main() {
  if (!BASE_URL) await fail('BASE_URL is not set (nginx of a running stack)');
  if (Object.keys(SERVER_PIDS).length < 2) await fail('SERVER_PIDS must name at least two socket servers');

  browser = await step('launch chromium', () => chromium.launch({
    executablePath: CHROMIUM,
    timeout: STEP_TIMEOUT_MS,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  }));

  const alice = await step('alice opens the page', () => openPage('alice'));
  const bob = await step('bob opens the page', () => openPage('bob'));
  const aliceServer = await step('alice signs in and connects', () => signIn(alice, 'alice'));
  log(`     alice is on ${aliceServer}`);
  const bobServer = await step('bob signs in and connects', () => signIn(bob, 'bob'));
  log(`     bob is on ${bobServer}`);

  await step('alice starts a direct chat with bob', async () => {
    await alice.getByTestId('new-direct-input').fill('bob');
    await alice.getByTestId('new-direct-button').click();
    await alice.locator('[data-testid="chat-title"]', { hasText: 'bob' }).waitFor();
  });

  const seq1 = await step('alice sends a message', () => send(alice, 'Hi Bob, it is Alice'));
  await step('bob sees the conversation and alice\'s message', async () => {
    await openChatWith(bob, 'alice');
    await message(bob, 'Hi Bob, it is Alice').waitFor();
    const seq = Number(await message(bob, 'Hi Bob, it is Alice').getAttribute('data-seq'));
    if (seq !== seq1) throw new Error(`bob shows seq ${seq}, alice got ${seq1}`);
  });
  await step('alice sees the read mark once bob has it open', async () => {
    await message(alice, 'Hi Bob, it is Alice').and(alice.locator('[data-status="read"]')).waitFor();
  });
  await step('alice sees bob typing', async () => {
    await bob.getByTestId('message-input').pressSequentially('Hey', { delay: 30 });
    await alice.locator('[data-testid="typing-indicator"]', { hasText: 'bob is typing' }).waitFor();
  });
  await step('bob replies and alice sees it', async () => {
    await send(bob, 'Hey Alice! Bob here.');
    await message(alice, 'Hey Alice! Bob here.').waitFor();
  });

  await step('bob reloads, signs in again and sees the history', async () => {
    await bob.reload();
    await signIn(bob, 'bob');
    await openChatWith(bob, 'alice');
    await message(bob, 'Hi Bob, it is Alice').waitFor();
    await message(bob, 'Hey Alice! Bob here.').waitFor();
    const seqs = await bob.locator('[data-testid="message"][data-seq]')
      .evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    if (seqs.join(',') !== '1,2') throw new Error(`history seqs ${seqs}, want 1,2`);
  });

  const killed = await step('kill -9 the socket server alice is on', async () => {
    const id = await serverIdOf(alice);
    process.kill(SERVER_PIDS[id], 'SIGKILL');
    return id;
  });
  log(`     killed ${killed} (pid ${SERVER_PIDS[killed]})`);
  const moved = await step('alice reconnects to another server through the registry', async () => {
    await alice.waitForFunction((dead) => {
      const id = document.querySelector('[data-testid="server-id"]').textContent.trim();
      const state = document.querySelector('[data-testid="connection-status"]').dataset.state;
      return state === 'connected' && id !== dead && id !== '—';
    }, killed, { timeout: RECONNECT_TIMEOUT_MS, polling: 100 });
    return serverIdOf(alice);
  });
  log(`     alice is now on ${moved}`);
  await bob.locator('[data-testid="connection-status"][data-state="connected"]')
    .waitFor({ timeout: RECONNECT_TIMEOUT_MS });

  await step('after the failover alice sends and bob sees it', async () => {
    await send(alice, 'Still here after the crash');
    await message(bob, 'Still here after the crash').waitFor();
  });
  await step('after the failover bob sends and alice sees it', async () => {
    await send(bob, 'Me too, nothing lost');
    await message(alice, 'Me too, nothing lost').waitFor();
    const seqs = await alice.locator('[data-testid="message"][data-seq]')
      .evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    if (seqs.join(',') !== '1,2,3,4') throw new Error(`alice shows seqs ${seqs}, want 1,2,3,4`);
  });

  await step('alice goes offline and sends: the message waits in her outbox, bob has nothing', async () => {
    await goOffline(alice);
    await sendQueued(alice, 'Written while offline');
    await alice.waitForTimeout(1000);
    if (await countOf(bob, 'Written while offline') !== 0) throw new Error('bob got it while alice was offline');
    const pending = await alice.evaluate(() => JSON.parse(localStorage.getItem('switchboard:alice:outbox') || '[]'));
    if (!JSON.stringify(pending).includes('Written while offline')) throw new Error(`not in the stored outbox: ${JSON.stringify(pending)}`);
  });
  await step('alice goes online: it is delivered once, as seq 5', async () => {
    await alice.getByTestId('offline-button').click();
    await alice.locator('[data-testid="connection-status"][data-state="connected"]').waitFor();
    await expectOnce([alice, bob], 'Written while offline');
    const seq = Number(await message(bob, 'Written while offline').getAttribute('data-seq'));
    if (seq !== 5) throw new Error(`seq ${seq}, want 5`);
  });
  await step('alice sends offline, then reloads: the outbox survives the reload and is delivered once', async () => {
    await goOffline(alice);
    await sendQueued(alice, 'Left in the outbox over a reload');
    await alice.reload();
    await signIn(alice, 'alice');
    await openChatWith(alice, 'bob');
    await expectOnce([alice, bob], 'Left in the outbox over a reload');
    const seqs = await bob.locator('[data-testid="message"][data-seq]')
      .evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    if (seqs.join(',') !== '1,2,3,4,5,6') throw new Error(`bob shows seqs ${seqs}, want 1..6`);
  });

  const carol = await step('carol opens the page forced onto the HTTP fallback (?transport=sse)', () => openPage('carol', '?transport=sse'));
  await step('carol signs in over SSE', async () => {
    await signIn(carol, 'carol');
    await carol.locator('[data-testid="transport"][data-transport="sse"]').waitFor();
  });
  await step('carol (SSE) and bob (WebSocket) chat both ways', async () => {
    await carol.getByTestId('new-direct-input').fill('bob');
    await carol.getByTestId('new-direct-button').click();
    await carol.locator('[data-testid="chat-title"]', { hasText: 'bob' }).waitFor();
    await send(carol, 'Hello from behind a proxy');
    await openChatWith(bob, 'carol');
    await message(bob, 'Hello from behind a proxy').waitFor();
    await send(bob, 'Loud and clear, carol');
    await expectOnce([carol], 'Loud and clear, carol');
    // `typing` goes out at most every 2 s per conversation (the fill above sent one): keep
    // typing until bob sees it.
    await Promise.all([
      carol.getByTestId('message-input').pressSequentially('typing over http, slowly', { delay: 120 }),
      bob.locator('[data-testid="typing-indicator"]', { hasText: 'carol is typing' }).waitFor(),
    ]);
    await carol.getByTestId('message-input').fill('');
    // Back to alice's chat for the steps below.
    await openChatWith(bob, 'alice');
  });

  await step('alice creates a group; bob sees it with an unread count', async () => {
    await alice.locator('#new-group summary').click();
    await alice.getByTestId('new-group-name').fill('Launch team');
    await alice.getByTestId('new-group-members').fill('bob, carol');
    await alice.getByTestId('new-group-button').click();
    await alice.locator('[data-testid="chat-title"]', { hasText: 'Launch team' }).waitFor();
    await send(alice, 'Welcome to the launch team!');
    const item = bob.locator('[data-testid="conversation-item"][data-title="Launch team"]');
    await item.locator('[data-testid="unread-badge"]', { hasText: '1' }).waitFor();
  });
  await step('bob types in the direct chat (for the screenshot)', async () => {
    await alice.locator('[data-testid="conversation-item"][data-title="bob"]').click();
    // `typing` goes out at most every 2 s per conversation: keep typing until alice sees it.
    await Promise.all([
      bob.getByTestId('message-input').pressSequentially('See you at the launch', { delay: 120 }),
      alice.locator('[data-testid="typing-indicator"]', { hasText: 'bob is typing' }).waitFor(),
    ]);
  });

  await step('every request went to this origin or a socket server', async () => {
    if (foreign.length) throw new Error(`requests elsewhere: ${foreign.slice(0, 5).join(', ')}`);
  });

  await step(`screenshots to ${SCREENSHOT} (and -bob)`, async () => {
    await alice.screenshot({ path: SCREENSHOT });
    await bob.screenshot({ path: SCREENSHOT.replace(/(\.png)?$/, '-bob.png') });
  });
  await browser.close();
  clearTimeout(watchdog);
  log('browser chat test passed');
  console.log('1 passed, 0 failed');
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
