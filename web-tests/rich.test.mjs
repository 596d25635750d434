// Headless-browser test of the demo's rich messages (issue 28 part 4), against a running stack
// with the object store (Garage) whose bucket allows this origin (CORS):
//
//   BASE_URL=http://127.0.0.1:PORT node rich.test.mjs
//
// Run by e2e-tests/tests/e2e/browser.rs, which starts the stack and sets the bucket's CORS
// rule. Optional: CHROMIUM (default /usr/bin/chromium), SCREENSHOT (default
// /tmp/switchboard-rich.png).
//
// Two browser contexts, alice and bob, in a direct chat: alice sends and edits, bob sees the
// edit; bob replies and reacts, alice sees both; alice deletes a message, bob sees the
// tombstone; alice uploads an image (a PNG made here) and a text file with progress through
// the pre-signed URL, bob sees the thumbnail and downloads both (the bytes are compared); both
// reload and show the same final state from history.

import { chromium } from 'playwright-core';
import { deflateSync } from 'node:zlib';

const BASE_URL = process.env.BASE_URL;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.SCREENSHOT || '/tmp/switchboard-rich.png';
const TOTAL_TIMEOUT_MS = 110_000;
const STEP_TIMEOUT_MS = 15_000;

const started = Date.now();
const logs = [];
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${msg}`);

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
    await fail(`${name}: ${e && e.message ? e.message.split('\n').slice(0, 8).join('\n') : e}`);
  }
}

// ---------------------------------------------------------------- a PNG, made here

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
/** An RGB PNG of `width` x `height`: a gradient with noise (so it does not compress to nothing). */
function makePng(width, height) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  let seed = 42;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    raw[row] = 0; // filter: none
    for (let x = 0; x < width; x++) {
      const i = row + 1 + x * 3;
      raw[i] = (x * 255) / width ^ (rand() & 31);
      raw[i + 1] = (y * 255) / height ^ (rand() & 31);
      raw[i + 2] = 160 ^ (rand() & 63);
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---------------------------------------------------------------- page helpers

async function openPage(user) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('console', (m) => logs.push(`${user} console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`${user} PAGE ERROR: ${e.message}`));
  await page.goto(`${BASE_URL}/`);
  return page;
}

async function signIn(page, user) {
  await page.getByTestId('login-input').fill(user);
  await page.getByTestId('login-button').click();
  await page.locator('[data-testid="connection-status"][data-state="connected"]').waitFor();
}

async function openChatWith(page, peer) {
  const item = page.locator(`[data-testid="conversation-item"][data-title="${peer}"]`);
  await item.waitFor();
  await item.click();
  await page.locator('[data-testid="chat-title"]', { hasText: peer }).waitFor();
}

const byText = (page, body) => page.locator('[data-testid="message"]', { hasText: body });
const byId = (page, id) => page.locator(`[data-testid="message"][data-message-id="${id}"]`);

/** Sends what is in the composer (plus any uploaded files), waits for `sent`: its message id. */
async function send(page, body) {
  await page.getByTestId('message-input').fill(body);
  await page.getByTestId('send-button').click();
  const row = byText(page, body).and(page.locator('[data-seq]'));
  await row.waitFor();
  return row.getAttribute('data-message-id');
}

/** Clicks one of a message's actions (they show on hover; Playwright hovers before clicking). */
async function action(page, id, testid) {
  await byId(page, id).getByTestId(testid).click();
}

/** What a page shows of the open conversation, without URLs or times: compared across a reload. */
function snapshot(page) {
  return page.locator('[data-testid="message"][data-seq]').evaluateAll((rows) => rows.map((r) => ({
    seq: Number(r.dataset.seq),
    id: r.dataset.messageId,
    sender: r.dataset.sender,
    body: r.querySelector('[data-testid="message-body"]')?.textContent ?? null,
    edited: !!r.querySelector('[data-testid="edited-mark"]'),
    deleted: !!r.querySelector('[data-testid="tombstone"]'),
    replyTo: r.dataset.replyTo ?? null,
    quote: r.querySelector('[data-testid="reply-quote"]')?.textContent ?? null,
    reactions: [...r.querySelectorAll('[data-testid="reaction"]')].map((x) => `${x.dataset.emoji}${x.dataset.count}${x.dataset.me === 'true' ? '*' : ''}`),
    images: [...r.querySelectorAll('[data-testid="attachment-image"]')].map((x) => `${x.getAttribute('width')}x${x.getAttribute('height')}`),
    files: [...r.querySelectorAll('[data-testid="attachment-link"]')].map((x) => x.textContent),
  })));
}

/** The bytes behind a download link, fetched by the page itself (as a click would). */
async function download(page, link) {
  const href = await link.getAttribute('href');
  const b64 = await page.evaluate(async (url) => {
    const res = await fetch(url);
    if (!res.ok) throw new Error(`GET ${url}: ${res.status}`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    let s = '';
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  }, href);
  return Buffer.from(b64, 'base64');
}

/** Waits until the message's thumbnail is the image itself, loaded from the store, with its metadata's size. */
async function waitImageLoaded(page, id, width, height) {
  // Looked up on every poll: a re-render replaces the element.
  await page.waitForFunction(([mid, w, h]) => {
    const img = document.querySelector(`[data-testid="message"][data-message-id="${mid}"] [data-testid="attachment-image"]`);
    return !!img && img.complete && img.naturalWidth === w && img.naturalHeight === h
      && img.getAttribute('width') === String(w) && img.getAttribute('height') === String(h);
  }, [id, width, height], { polling: 100 });
}

async function main() {
  if (!BASE_URL) await fail('BASE_URL is not set (nginx of a running stack)');
  const png = makePng(240, 160);
  const notes = Buffer.from('Agenda\n1. lunch\n2. slides\n'.repeat(50));
  log(`     test image: ${png.length} bytes, text file: ${notes.length} bytes`);

  browser = await step('launch chromium', () => chromium.launch({
    executablePath: CHROMIUM,
    timeout: STEP_TIMEOUT_MS,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  }));
  const alice = await step('alice opens the page and signs in', async () => {
    const p = await openPage('alice');
    await signIn(p, 'alice');
    return p;
  });
  const bob = await step('bob opens the page and signs in', async () => {
    const p = await openPage('bob');
    await signIn(p, 'bob');
    return p;
  });
  await step('alice starts a direct chat with bob', async () => {
    await alice.getByTestId('new-direct-input').fill('bob');
    await alice.getByTestId('new-direct-button').click();
    await alice.locator('[data-testid="chat-title"]', { hasText: 'bob' }).waitFor();
  });

  const m1 = await step('alice sends a message; bob sees it', async () => {
    const id = await send(alice, 'Lunch at noon?');
    await openChatWith(bob, 'alice');
    await byId(bob, id).and(bob.locator('[data-seq]')).waitFor();
    return id;
  });

  await step('alice edits it; both show the new text, marked edited, under the same seq', async () => {
    const seq = await byId(alice, m1).getAttribute('data-seq');
    await action(alice, m1, 'action-edit');
    await alice.locator('[data-testid="composer-context"][data-kind="edit"]').waitFor();
    await alice.getByTestId('message-input').fill('Lunch at 12:30?');
    await alice.getByTestId('send-button').click();
    for (const page of [alice, bob]) {
      const row = byId(page, m1);
      await row.getByTestId('edited-mark').waitFor();
      const body = await row.getByTestId('message-body').textContent();
      if (body !== 'Lunch at 12:30?') throw new Error(`body "${body}" after the edit`);
      if ((await row.getAttribute('data-seq')) !== seq) throw new Error('the edit moved the message');
    }
    if (await byText(bob, 'Lunch at noon?').count() !== 0) throw new Error('bob still shows the old text');
  });

  const reply = await step('bob replies to it; alice sees the reply with its quote', async () => {
    await action(bob, m1, 'action-reply');
    await bob.locator('[data-testid="composer-context"][data-kind="reply"]', { hasText: 'Lunch at 12:30?' }).waitFor();
    const id = await send(bob, 'Works for me');
    const row = byId(alice, id);
    await row.getByTestId('reply-quote').filter({ hasText: 'Lunch at 12:30?' }).waitFor();
    if ((await row.getAttribute('data-reply-to')) !== m1) throw new Error('the reply names another message');
    return id;
  });

  await step('bob reacts 👍 to it; alice sees the count, and 🎉 of hers on the reply reaches bob', async () => {
    await action(bob, m1, 'action-react');
    await bob.locator('[data-testid="react-option"][data-emoji="👍"]').click();
    await byId(bob, m1).locator('[data-testid="reaction"][data-emoji="👍"][data-count="1"][data-me="true"]').waitFor();
    await byId(alice, m1).locator('[data-testid="reaction"][data-emoji="👍"][data-count="1"][data-me="false"]').waitFor();
    await action(alice, reply, 'action-react');
    await alice.locator('[data-testid="react-option"][data-emoji="🎉"]').click();
    await byId(bob, reply).locator('[data-testid="reaction"][data-emoji="🎉"][data-count="1"][data-me="false"]').waitFor();
  });

  await step('alice deletes a message; both show the tombstone, the text is gone', async () => {
    const id = await send(alice, 'Wrong chat, sorry');
    await byId(bob, id).and(bob.locator('[data-seq]')).waitFor();
    await action(alice, id, 'action-delete');
    for (const page of [alice, bob]) {
      await byId(page, id).getByTestId('tombstone').waitFor();
      if (await byText(page, 'Wrong chat, sorry').count() !== 0) throw new Error('the deleted text still shows');
      if (await byId(page, id).getByTestId('action-reply').count() !== 0) throw new Error('a tombstone offers actions');
    }
  });

  await step('alice attaches an image and a file: both upload with progress through the pre-signed URLs', async () => {
    await alice.getByTestId('file-input').setInputFiles([
      { name: 'trip.png', mimeType: 'image/png', buffer: png },
      { name: 'agenda.txt', mimeType: 'text/plain', buffer: notes },
    ]);
    const uploads = alice.getByTestId('upload');
    await alice.waitForFunction(() => {
      const els = [...document.querySelectorAll('[data-testid="upload"]')];
      return els.length === 2 && els.every((e) => e.dataset.state === 'done');
    }, null, { polling: 100 });
    for (let i = 0; i < 2; i++) {
      const u = uploads.nth(i);
      const seen = (await u.getAttribute('data-seen')).split(',').map(Number);
      const pct = Number(await u.getAttribute('data-progress'));
      const bar = Number(await u.getByTestId('upload-progress').getAttribute('value'));
      if (seen[0] !== 0 || seen[seen.length - 1] !== 100 || pct !== 100 || bar !== 100) {
        throw new Error(`upload ${i}: progress seen ${seen}, shown ${pct}% / bar ${bar}`);
      }
      log(`     upload ${i}: progress ${seen.join(' → ')} %`);
    }
  });

  const photo = await step('alice sends them with a caption; her own message shows the thumbnail', async () => {
    const id = await send(alice, 'Photo from the trip');
    if (await alice.getByTestId('upload').count() !== 0) throw new Error('the uploads stay in the composer');
    await waitImageLoaded(alice, id, 240, 160);
    return id;
  });

  await step('bob sees the thumbnail (the image from the store) and the file link', async () => {
    await waitImageLoaded(bob, photo, 240, 160);
    await byId(bob, photo).getByTestId('attachment-link').filter({ hasText: 'agenda.txt' }).waitFor();
  });

  await step('bob downloads both: the bytes are the ones alice uploaded', async () => {
    const row = byId(bob, photo);
    const gotPng = await download(bob, row.getByTestId('attachment-link').filter({ hasText: 'trip.png' }));
    if (!gotPng.equals(png)) throw new Error(`the image differs: ${gotPng.length} bytes, want ${png.length}`);
    const gotNotes = await download(bob, row.getByTestId('attachment-link').filter({ hasText: 'agenda.txt' }));
    if (!gotNotes.equals(notes)) throw new Error(`the file differs: ${gotNotes.length} bytes, want ${notes.length}`);
  });

  const before = await step('both pages show the same conversation', async () => {
    const a = await snapshot(alice);
    const b = await snapshot(bob);
    const strip = (rows) => rows.map(({ reactions, ...r }) => ({ ...r, reactions: reactions.map((x) => x.replace('*', '')) }));
    if (JSON.stringify(strip(a)) !== JSON.stringify(strip(b))) {
      throw new Error(`alice ${JSON.stringify(a)}\nbob ${JSON.stringify(b)}`);
    }
    return { alice: a, bob: b };
  });
  log(`     ${JSON.stringify(before.bob)}`);

  await step('both reload: history shows the same final state', async () => {
    for (const [page, user, peer] of [[alice, 'alice', 'bob'], [bob, 'bob', 'alice']]) {
      await page.reload();
      await signIn(page, user);
      await openChatWith(page, peer);
      await waitImageLoaded(page, photo, 240, 160);
      // Every message of the conversation is back (history), rendered in its current state.
      await page.waitForFunction((n) => document.querySelectorAll('[data-testid="message"][data-seq]').length >= n,
        before[user].length, { polling: 100 });
      const after = await snapshot(page);
      if (JSON.stringify(after) !== JSON.stringify(before[user])) {
        throw new Error(`${user} after the reload:\n${JSON.stringify(after)}\nbefore:\n${JSON.stringify(before[user])}`);
      }
    }
  });

  await step(`screenshots to ${SCREENSHOT} (and -bob)`, async () => {
    await alice.screenshot({ path: SCREENSHOT });
    await bob.screenshot({ path: SCREENSHOT.replace(/(\.png)?$/, '-bob.png') });
  });
  await browser.close();
  clearTimeout(watchdog);
  log('browser rich-message test passed');
  console.log('1 passed, 0 failed');
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
