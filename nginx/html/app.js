// Switchboard demo web client: the UI only. Connection, reconnects (through the registry, with
// full jitter), the persistent outbox (resent until `sent`, across reloads), exactly-once
// in-order delivery, resync after reconnects, receipts, typing throttling, token refresh and
// the HTTP fallback where WebSockets are blocked are all @switchboard/client's (clients/js),
// whose built ES modules nginx serves from ./sdk/ (clients/js/vendor-demo.sh copies them;
// nothing is fetched from elsewhere).
//
// Flow: POST /api/v1/dev/token (the SDK's getToken) -> the SDK connects -> its events render.
// Rich messages are the SDK's too: edits, deletes and reactions arrive as `event`s in seq
// order and are applied with its applyEvent (the server's rule, so a reload shows the same);
// files go straight to the object store through uploadAttachment (pre-signed PUT, progress),
// and a message's attachment metadata and download URLs come from attachmentsOf.
// `?transport=sse` (or `websocket`) in the page URL forces a transport; the default tries
// WebSocket first and falls back by itself.

import { SwitchboardClient, applyEvent, isImage } from './sdk/index.js';

const INITIAL_WINDOW = 100;    // how many recent messages a conversation shows at first
const TYPING_SHOW_MS = 3000;
const USER_RE = /^[A-Za-z0-9_.|@+-]{1,128}$/;
const EMOJI = ['👍', '❤️', '😂', '🎉', '😮'];

// ---------------------------------------------------------------- state
const state = {
  user: null,
  client: null,
  offs: [],
  conn: 'offline',            // connecting | connected | reconnecting | offline
  everConnected: false,
  offline: false,             // the user chose "Go offline"
  conversations: new Map(),   // id -> conversation (see newConversation)
  order: [],                  // conversation ids, most recent first
  presence: new Map(),        // user_id -> {status, last_seen}
  openId: null,
  refreshing: null,
  compose: null,              // {kind: 'reply' | 'edit', convId, message_id} while replying or editing
  pickerFor: null,            // message_id whose emoji picker is open
  uploads: [],                // files of the composer: {key, convId, name, size, loaded, state, attachment, error}
};

const $ = (id) => document.getElementById(id);

// A tiny DOM builder: h('div', {class: 'x', dataset: {seq: 1}}, 'text', child).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---------------------------------------------------------------- toasts
function toast(text, kind = 'info', ms = 5000) {
  const el = h('div', { class: `toast ${kind}`, 'data-testid': 'toast', role: kind === 'error' ? 'alert' : 'status' }, text);
  $('toasts').append(el);
  setTimeout(() => el.remove(), ms);
  while ($('toasts').children.length > 4) $('toasts').firstChild.remove();
}

// ---------------------------------------------------------------- tokens (dev mode)
async function devToken(user) {
  const resp = await fetch('/api/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: user }),
  });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error((data && data.error && data.error.message) || `HTTP ${resp.status}`);
  return data.token;
}

// ---------------------------------------------------------------- conversations
function newConversation(c) {
  const lastSeq = Number(c.last_seq || 0);
  const floor = Math.max(0, lastSeq - INITIAL_WINDOW);
  return {
    id: c.id,
    kind: c.kind,
    name: c.name || null,
    members: c.members || [],
    lastSeq,               // highest seq known to exist
    floor,                 // messages at or below floor are not shown ("load earlier")
    messages: new Map(),   // seq -> message (the SDK's events, and history for display)
    byId: new Map(),       // message_id -> seq (events and replies name messages by id)
    readSeq: 0,            // my cumulative read position
    serverUnread: Number(c.unread || 0),
    receipts: new Map(),   // user_id -> {delivered, read}
    typing: new Map(),     // user_id -> expiry time
    loading: null,
    loaded: false,
  };
}

function mergeConversation(c) {
  let conv = state.conversations.get(c.id);
  if (!conv) {
    conv = newConversation(c);
    state.conversations.set(c.id, conv);
  } else {
    conv.members = c.members || conv.members;
    conv.name = c.name || conv.name;
    conv.lastSeq = Math.max(conv.lastSeq, Number(c.last_seq || 0));
    conv.serverUnread = Number(c.unread || 0);
  }
  if (!Array.isArray(c.receipts) && conv.serverUnread === 0) {
    conv.readSeq = Math.max(conv.readSeq, conv.lastSeq);
  }
  for (const r of c.receipts || []) {
    if (r.user_id === state.user) {
      conv.readSeq = Math.max(conv.readSeq, Number(r.read_seq || 0));
    } else {
      applyReceipt(conv, r.user_id, 'delivered', Number(r.delivered_seq || 0));
      applyReceipt(conv, r.user_id, 'read', Number(r.read_seq || 0));
    }
  }
  return conv;
}

function otherMembers(conv) {
  return conv.members.filter((m) => m !== state.user);
}

function titleOf(conv) {
  if (conv.kind === 'direct') return otherMembers(conv)[0] || state.user;
  return conv.name || otherMembers(conv).join(', ') || 'Group';
}

function lastMessage(conv) {
  let best = null;
  for (const m of conv.messages.values()) if (!best || m.seq > best.seq) best = m;
  return best;
}

function unreadOf(conv) {
  let n = 0;
  for (const m of conv.messages.values()) if (m.seq > conv.readSeq && m.sender_id !== state.user) n++;
  // Before its history is loaded, the listing's count (live messages may already be past it).
  if (!conv.loaded) return Math.max(conv.serverUnread, n);
  return n + (conv.floor > conv.readSeq ? Math.max(0, conv.serverUnread - n) : 0);
}

function pendingOf(convId) {
  return state.client ? state.client.outbox().filter((e) => e.conversation_id === convId) : [];
}

function sortConversations() {
  const key = (c) => {
    const m = lastMessage(c);
    const pendingAt = pendingOf(c.id).reduce((a, p) => Math.max(a, p.queued_at), 0);
    return Math.max(m ? Date.parse(m.created_at) || 0 : 0, pendingAt, c.createdLocally || 0);
  };
  state.order = [...state.conversations.values()]
    .sort((a, b) => key(b) - key(a) || b.lastSeq - a.lastSeq || a.id.localeCompare(b.id))
    .map((c) => c.id);
}

async function refreshConversations() {
  if (state.refreshing) return state.refreshing;
  state.refreshing = (async () => {
    try {
      for (const c of await state.client.allConversations()) mergeConversation(c);
      fetchPresence();
      renderAll();
    } finally {
      state.refreshing = null;
    }
  })();
  return state.refreshing;
}

// The messages a conversation shows are the SDK's `message` events; history fills in what came
// before this page (the SDK delivers only what is new to its stored cursor).
function loadConversation(conv) {
  if (conv.loading) return conv.loading;
  conv.loading = (async () => {
    try {
      for (let after = conv.floor; ;) {
        const list = await state.client.history(conv.id, { afterSeq: after, limit: 200 });
        for (const m of list) addMessage(conv, m);
        if (list.length < 200) break;
        after = list[list.length - 1].seq;
      }
      conv.loaded = true;
      afterMessagesChanged(conv);
    } catch (e) {
      if (e.status === 403 || e.status === 404) {
        state.conversations.delete(conv.id);
        if (state.openId === conv.id) state.openId = null;
        renderAll();
      } else {
        console.warn('history failed', conv.id, e);
      }
    } finally {
      conv.loading = null;
    }
  })();
  return conv.loading;
}

async function loadEarlier(conv) {
  if (conv.floor <= 0) return;
  const from = Math.max(0, conv.floor - INITIAL_WINDOW);
  const list = await state.client.history(conv.id, { afterSeq: from, limit: conv.floor - from });
  for (const m of list) addMessage(conv, m);
  conv.floor = from;
  const el = $('message-list');
  const before = el.scrollHeight - el.scrollTop;
  renderMessages();
  el.scrollTop = el.scrollHeight - before;
}

function addMessage(conv, m) {
  const seq = Number(m.seq);
  const held = conv.messages.get(seq);
  if (held) {
    // A live message names its files by id; a history row brings their metadata.
    if (m.attachments && m.attachments.some((a) => a.url) && !(held.attachments || []).some((a) => a.url) && !held.deleted) {
      held.attachments = m.attachments;
      return true;
    }
    return false;
  }
  conv.messages.set(seq, {
    message_id: m.message_id, seq, sender_id: m.sender_id, body: m.body,
    created_at: m.created_at, client_msg_id: m.client_msg_id,
    reply_to: m.reply_to, edited_at: m.edited_at, deleted: m.deleted,
    reactions: m.reactions, attachments: m.attachments,
  });
  conv.byId.set(m.message_id, seq);
  conv.lastSeq = Math.max(conv.lastSeq, seq);
  if (m.sender_id && conv.typing.delete(m.sender_id)) renderTyping();
  return true;
}

function afterMessagesChanged(conv) {
  markReadIfVisible(conv);
  sortConversations();
  renderConversations();
  if (state.openId === conv.id) renderMessages();
  updateTitle();
}

// `delivered` is the SDK's (automatic); `read` when the conversation is open and visible.
function markReadIfVisible(conv) {
  if (document.visibilityState !== 'visible' || state.openId !== conv.id) return;
  state.client.markRead(conv.id);
  const last = lastMessage(conv);
  conv.readSeq = Math.max(conv.readSeq, last ? last.seq : 0);
  conv.serverUnread = 0;
}

function applyReceipt(conv, user, kind, seq) {
  if (!seq) return;
  const r = conv.receipts.get(user) || { delivered: 0, read: 0 };
  if (kind === 'read') { r.read = Math.max(r.read, seq); r.delivered = Math.max(r.delivered, seq); }
  else r.delivered = Math.max(r.delivered, seq);
  conv.receipts.set(user, r);
}

function markOf(conv, m) {
  let read = false; let delivered = false;
  for (const [user, r] of conv.receipts) {
    if (user === state.user) continue;
    if (r.read >= m.seq) read = true;
    if (r.delivered >= m.seq) delivered = true;
  }
  return read ? 'read' : delivered ? 'delivered' : 'sent';
}

// Answers false when nothing was sent (the composer keeps its text).
function sendMessage(body) {
  const conv = state.conversations.get(state.openId);
  if (!conv) return false;
  const files = state.uploads.filter((u) => u.convId === conv.id);
  if (files.some((u) => u.state === 'uploading')) { toast('Wait for the upload to finish', 'info', 2500); return false; }
  const ready = files.filter((u) => u.state === 'done');
  const compose = state.compose && state.compose.convId === conv.id ? state.compose : null;
  if (compose && compose.kind === 'edit') {
    if (!body.trim()) return false;
    state.client.edit(conv.id, compose.message_id, body)
      .catch((e) => toast(h('span', {}, `Not edited: ${e.message} `, h('code', {}, e.code || '')), 'error'));
    setCompose(null);
    return true;
  }
  if (!body.trim() && ready.length === 0) return false;
  // Stored in the outbox before anything is sent; confirmed by a `message` event (our own
  // sends are in the ordered stream too). Refusals show on the bubble (the outbox event).
  const opts = {};
  if (compose && compose.kind === 'reply') opts.replyTo = compose.message_id;
  if (ready.length) opts.attachments = ready.map((u) => u.attachment.id);
  state.client.send(conv.id, body, opts).catch(() => undefined);
  state.uploads = state.uploads.filter((u) => u.convId !== conv.id || u.state === 'uploading');
  setCompose(null);
  renderUploads();
  sortConversations();
  renderConversations();
  renderMessages({ stick: true });
  return true;
}

// ---------------------------------------------------------------- rich messages
function setCompose(compose) {
  state.compose = compose;
  const bar = $('composer-context');
  const conv = compose && state.conversations.get(compose.convId);
  const m = conv && messageById(conv, compose.message_id);
  if (!m) {
    state.compose = null;
    bar.hidden = true;
    return;
  }
  bar.hidden = false;
  bar.dataset.kind = compose.kind;
  $('composer-context-text').replaceChildren(
    compose.kind === 'edit' ? 'Editing your message' : h('span', {}, 'Replying to ', h('b', {}, m.sender_id), ': ', snippet(m)));
  if (compose.kind === 'edit') $('message-input').value = m.body;
  $('message-input').focus();
}

function messageById(conv, id) {
  const seq = conv.byId.get(id);
  return seq === undefined ? null : conv.messages.get(seq);
}

function snippet(m) {
  if (m.deleted) return 'message deleted';
  const text = m.body.length > 80 ? `${m.body.slice(0, 80)}…` : m.body;
  return text || (m.attachments && m.attachments.length ? '📎 file' : '');
}

// Edits, deletes and reactions, in seq order with the messages (the SDK's `event`).
function onEvent(e) {
  const conv = state.conversations.get(e.conversation_id);
  if (!conv) return;
  const m = messageById(conv, e.message_id);
  // Not held (before this page's window): history shows it in its current state when loaded.
  if (!m) return;
  const next = applyEvent(m, e, state.user);
  if (next === m) return;
  conv.messages.set(m.seq, next);
  if (state.compose && state.compose.message_id === m.message_id && next.deleted) setCompose(null);
  afterMessagesChanged(conv);
}

function react(conv, m, emoji) {
  state.pickerFor = null;
  const mine = (m.reactions || []).find((r) => r.me);
  const next = mine && mine.emoji === emoji ? null : emoji;
  state.client.react(conv.id, m.message_id, next)
    .catch((e) => toast(h('span', {}, `Reaction refused: ${e.message} `, h('code', {}, e.code || '')), 'error'));
  renderMessages();
}

function deleteMessage(conv, m) {
  state.client.deleteMessage(conv.id, m.message_id)
    .catch((e) => toast(h('span', {}, `Not deleted: ${e.message} `, h('code', {}, e.code || '')), 'error'));
}

// A message's files: ids only until its history row gives metadata and download URLs.
function needsAttachmentInfo(m) {
  if (m.deleted || !m.attachments || !m.attachments.length) return false;
  return m.attachments.some((a) => !a.url || Date.parse(a.url_expires_at || '') < Date.now() + 10_000);
}

function loadAttachments(conv, m) {
  // One lookup at a time per message, and not again for a while after one failed.
  if (m.attachmentsLoading || Date.now() < (m.attachmentsRetryAt || 0)) return;
  m.attachmentsLoading = true;
  state.client.attachmentsOf(conv.id, m.seq)
    .then((list) => {
      const held = conv.messages.get(m.seq);
      if (held && !held.deleted) held.attachments = list;
      if (state.openId === conv.id) renderMessages();
    })
    .catch((e) => {
      m.attachmentsRetryAt = Date.now() + 10_000;
      console.warn('attachments of', m.seq, e.code, e.message);
    })
    .finally(() => { m.attachmentsLoading = false; });
}

function formatSize(n) {
  if (!(n >= 0)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function renderAttachments(m) {
  return h('div', { class: 'attachments' }, m.attachments.map((a) => {
    if (!a.url) {
      return h('div', { class: 'attachment loading', 'data-testid': 'attachment-loading', 'data-attachment-id': a.id }, '📎 …');
    }
    const link = h('a', {
      class: 'attachment-link', href: a.url, download: a.filename || '', target: '_blank', rel: 'noopener',
      'data-testid': 'attachment-link', 'data-attachment-id': a.id,
    }, `⬇ ${a.filename || 'file'}`, h('span', { class: 'attachment-size' }, formatSize(a.size)));
    if (isImage(a) && a.width && a.height) {
      // The image itself, scaled by CSS; width/height from the metadata reserve its space.
      const img = h('img', {
        class: 'attachment-image', src: a.url, alt: a.filename || 'image', loading: 'lazy',
        width: a.width, height: a.height, 'data-testid': 'attachment-image', 'data-attachment-id': a.id,
      });
      img.style.aspectRatio = `${a.width} / ${a.height}`;
      return h('figure', { class: 'attachment image' }, h('a', { href: a.url, target: '_blank', rel: 'noopener' }, img), link);
    }
    return h('div', { class: 'attachment file' }, link);
  }));
}

function renderReactions(conv, m) {
  if (!m.reactions || !m.reactions.length) return null;
  return h('div', { class: 'reactions' }, m.reactions.map((r) => h('button', {
    type: 'button', class: `reaction${r.me ? ' me' : ''}`, 'data-testid': 'reaction',
    'data-emoji': r.emoji, 'data-count': r.count, 'data-me': r.me ? 'true' : 'false',
    title: r.users.join(', '), onclick: () => react(conv, m, r.emoji),
  }, r.emoji, ' ', h('span', { class: 'reaction-count' }, r.count))));
}

function renderActions(conv, m, mine) {
  if (m.deleted) return null;
  const btn = (testid, title, label, onclick) => h('button', { type: 'button', class: 'msg-action', 'data-testid': testid, title, 'aria-label': title, onclick }, label);
  return h('div', { class: `msg-actions${state.pickerFor === m.message_id ? ' open' : ''}` },
    btn('action-reply', 'Reply', '↩', () => setCompose({ kind: 'reply', convId: conv.id, message_id: m.message_id })),
    btn('action-react', 'React', '☺', () => { state.pickerFor = state.pickerFor === m.message_id ? null : m.message_id; renderMessages(); }),
    mine ? btn('action-edit', 'Edit', '✎', () => setCompose({ kind: 'edit', convId: conv.id, message_id: m.message_id })) : null,
    mine ? btn('action-delete', 'Delete for everyone', '🗑', () => deleteMessage(conv, m)) : null,
    state.pickerFor === m.message_id
      ? h('div', { class: 'emoji-picker', 'data-testid': 'emoji-picker' }, EMOJI.map((e) => h('button', {
        type: 'button', class: 'emoji-option', 'data-testid': 'react-option', 'data-emoji': e, onclick: () => react(conv, m, e),
      }, e)))
      : null);
}

function renderReplyQuote(conv, m) {
  if (!m.reply_to) return null;
  const target = messageById(conv, m.reply_to);
  return h('div', {
    class: 'reply-quote', 'data-testid': 'reply-quote', 'data-reply-to': m.reply_to,
    onclick: () => { const el = document.querySelector(`[data-message-id="${m.reply_to}"]`); if (el) el.scrollIntoView({ block: 'center' }); },
  },
  target ? [h('b', {}, target.sender_id), ' ', snippet(target)] : 'an earlier message');
}

// Files picked in the composer upload at once, straight to the object store.
function uploadFiles(files) {
  const conv = state.conversations.get(state.openId);
  if (!conv) return;
  for (const file of files) {
    const u = { key: `${Date.now()}-${Math.random()}`, convId: conv.id, name: file.name, size: file.size, loaded: 0, state: 'uploading', seen: [] };
    state.uploads.push(u);
    state.client.uploadAttachment(conv.id, file, {
      onProgress: (p) => { u.loaded = p.loaded; u.seen.push(Math.round((100 * p.loaded) / Math.max(1, p.total))); renderUploads(); },
    }).then((a) => { u.state = 'done'; u.attachment = a; }, (e) => {
      u.state = 'failed';
      u.error = e;
      toast(h('span', {}, `Upload of ${file.name} failed: ${e.message} `, h('code', {}, e.code || '')), 'error');
    }).finally(renderUploads);
  }
  renderUploads();
}

function renderUploads() {
  const list = $('uploads');
  const mine = state.uploads.filter((u) => u.convId === state.openId);
  list.hidden = mine.length === 0;
  list.replaceChildren(...mine.map((u) => {
    const pct = Math.round((100 * u.loaded) / Math.max(1, u.size));
    return h('div', {
      class: `upload ${u.state}`, 'data-testid': 'upload', 'data-state': u.state, 'data-progress': pct,
      'data-seen': u.seen.join(','), title: u.error ? u.error.message : '',
    },
    h('span', { class: 'upload-name' }, `📎 ${u.name}`),
    h('progress', { max: 100, value: pct, 'data-testid': 'upload-progress' }),
    h('span', { class: 'upload-state' }, u.state === 'uploading' ? `${pct}%` : u.state === 'done' ? formatSize(u.size) : 'failed'),
    h('button', { type: 'button', class: 'upload-remove', title: 'Remove', 'aria-label': 'Remove',
      onclick: () => { state.uploads = state.uploads.filter((x) => x !== u); renderUploads(); } }, '✕'));
  }));
}

// ---------------------------------------------------------------- presence
async function fetchPresence() {
  const users = new Set();
  for (const c of state.conversations.values()) for (const m of otherMembers(c)) users.add(m);
  if (users.size === 0 || !state.client) return;
  try {
    for (const p of await state.client.presence([...users].slice(0, 200))) {
      state.presence.set(p.user_id, { status: p.status, last_seen: p.last_seen });
    }
    renderConversations();
    renderHeader();
  } catch (_) {
    // Presence is optional: the dots just stay grey.
  }
}

function isOnline(user) {
  const p = state.presence.get(user);
  return !!p && p.status === 'online';
}

function ago(iso) {
  const t = Date.parse(iso);
  if (!t) return '';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

// ---------------------------------------------------------------- connection status
function setConn(conn) {
  state.conn = conn;
  const el = $('connection-status');
  el.dataset.state = conn;
  el.className = `pill pill-${conn}`;
  el.textContent = { connected: 'Connected', connecting: 'Connecting…', reconnecting: 'Reconnecting…', offline: 'Offline' }[conn];
  const serverId = state.client && state.client.serverId;
  $('server-id').textContent = conn === 'connected' && serverId ? serverId : '—';
  const transport = $('transport');
  transport.textContent = state.client ? (state.client.transport === 'sse' ? 'SSE' : 'WebSocket') : '';
  transport.dataset.transport = state.client ? state.client.transport : '';
  $('offline-button').textContent = state.offline ? 'Go online' : 'Go offline';
  $('offline-button').dataset.offline = state.offline ? 'true' : 'false';
}

function onState(s) {
  if (s.state === 'connected') {
    state.everConnected = true;
    setConn('connected');
  } else if (s.state === 'connecting') {
    setConn(state.everConnected ? 'reconnecting' : 'connecting');
  } else {
    setConn('offline');
    if (s.code === 'unauthorized') toast('Signed out: the server refuses our token', 'error');
  }
}

// After every `hello`: the list may have changed while we were away (the SDK resyncs the
// messages of the conversations it knows).
function onHello() {
  refreshConversations().catch((e) => console.warn('conversation list failed', e));
}

async function onMessage(m) {
  let conv = state.conversations.get(m.conversation_id);
  if (!conv) {
    // Someone started a conversation with us: learn about it.
    for (let i = 0; i < 2 && !state.conversations.has(m.conversation_id); i++) {
      try { await refreshConversations(); } catch (_) { /* the next hello catches up */ }
    }
    conv = state.conversations.get(m.conversation_id);
    if (!conv) return;
  }
  addMessage(conv, m);
  afterMessagesChanged(conv);
}

function onReceipt(f) {
  const conv = state.conversations.get(f.conversation_id);
  if (!conv) return;
  if (f.user_id === state.user) {
    // Our other device: reading there clears the unread count here.
    if (f.kind === 'read') conv.readSeq = Math.max(conv.readSeq, f.seq);
  } else {
    applyReceipt(conv, f.user_id, f.kind, Number(f.seq));
  }
  renderConversations();
  if (state.openId === conv.id) renderMessages();
  updateTitle();
}

function onPresence(f) {
  state.presence.set(f.user_id, { status: f.status, last_seen: f.last_seen });
  renderConversations();
  renderHeader();
}

function onTyping(f) {
  if (f.user_id === state.user) return;
  const conv = state.conversations.get(f.conversation_id);
  if (!conv) return;
  conv.typing.set(f.user_id, Date.now() + TYPING_SHOW_MS);
  renderTyping();
  renderConversations();
  setTimeout(() => { renderTyping(); renderConversations(); }, TYPING_SHOW_MS + 50);
}

function onSendFailed({ entry, error }) {
  toast(h('span', {}, error.message || 'Not sent', ' ', h('code', {}, error.code || '')), 'error');
  if (state.openId === entry.conversation_id) renderMessages();
}

function onError(e) {
  // Background failures the SDK recovers from itself (a history page, a resync): log only.
  console.warn('switchboard:', e.code, e.message);
}

// ---------------------------------------------------------------- rendering
const PALETTE = ['#6366f1', '#0ea5e9', '#14b8a6', '#f59e0b', '#ef4444', '#a855f7', '#ec4899', '#22c55e', '#64748b'];
function colorFor(name) {
  let x = 0;
  for (const ch of name) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[x % PALETTE.length];
}

function avatar(el, name, { group = false, presenceOf = null } = {}) {
  el.replaceChildren(name.slice(0, 1));
  el.style.background = colorFor(name);
  el.classList.toggle('group', group);
  if (presenceOf) {
    el.append(h('span', {
      class: `presence-dot ${isOnline(presenceOf) ? 'online' : ''}`,
      'data-testid': 'presence-dot',
      'data-user': presenceOf,
      'data-status': isOnline(presenceOf) ? 'online' : 'offline',
    }));
  }
  return el;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'short', day: 'numeric' });
function shortTime(iso) {
  const t = Date.parse(iso);
  return t ? timeFmt.format(t) : '';
}

function typingUsers(conv) {
  const now = Date.now();
  const users = [];
  for (const [u, until] of conv.typing) {
    if (until > now) users.push(u); else conv.typing.delete(u);
  }
  return users;
}

function renderConversations() {
  const list = $('conversation-list');
  const items = state.order.map((id) => state.conversations.get(id)).filter(Boolean).map((conv) => {
    const title = titleOf(conv);
    const last = lastMessage(conv);
    const unread = unreadOf(conv);
    const typing = typingUsers(conv);
    const peer = conv.kind === 'direct' ? otherMembers(conv)[0] : null;
    let preview = last ? `${last.sender_id === state.user ? 'You: ' : conv.kind === 'group' ? last.sender_id + ': ' : ''}${snippet(last)}` : (conv.kind === 'group' ? `${conv.members.length} members` : 'No messages yet');
    if (typing.length) preview = conv.kind === 'group' ? `${typing[0]} is typing…` : 'typing…';
    return h('li', {
      class: `conversation-item${conv.id === state.openId ? ' active' : ''}`,
      'data-testid': 'conversation-item',
      'data-conversation-id': conv.id,
      'data-title': title,
      'data-kind': conv.kind,
      'data-unread': unread,
      role: 'button',
      tabindex: 0,
      onclick: () => openConversation(conv.id),
      onkeydown: (e) => { if (e.key === 'Enter') openConversation(conv.id); },
    },
    avatar(h('span', { class: 'avatar' }), title, { group: conv.kind === 'group', presenceOf: peer }),
    h('div', { class: 'conv-main' },
      h('div', { class: 'conv-top' },
        h('span', { class: 'conv-title', 'data-testid': 'conversation-title' }, title),
        h('span', { class: 'conv-time' }, last ? shortTime(last.created_at) : '')),
      h('div', { class: 'conv-bottom' },
        h('span', { class: `conv-preview${typing.length ? ' typing-preview' : ''}` }, preview),
        unread > 0 ? h('span', { class: 'unread-badge', 'data-testid': 'unread-badge' }, unread > 99 ? '99+' : unread) : null)));
  });
  list.replaceChildren(...items);
  $('conversation-empty').hidden = items.length > 0;
}

function renderHeader() {
  const conv = state.conversations.get(state.openId);
  if (!conv) return;
  const title = titleOf(conv);
  const peer = conv.kind === 'direct' ? otherMembers(conv)[0] : null;
  avatar($('chat-avatar'), title, { group: conv.kind === 'group', presenceOf: peer });
  $('chat-title').textContent = title;
  const sub = $('chat-subtitle');
  sub.classList.remove('online');
  if (conv.kind === 'group') {
    const online = otherMembers(conv).filter(isOnline).length;
    sub.textContent = `${conv.members.length} members${online ? ` · ${online} online` : ''}`;
  } else if (peer && isOnline(peer)) {
    sub.textContent = 'online';
    sub.classList.add('online');
  } else if (peer && state.presence.get(peer) && state.presence.get(peer).last_seen) {
    sub.textContent = `last seen ${ago(state.presence.get(peer).last_seen)}`;
  } else {
    sub.textContent = 'direct message';
  }
}

function renderTyping() {
  const conv = state.conversations.get(state.openId);
  const el = $('typing-indicator');
  const users = conv ? typingUsers(conv) : [];
  el.textContent = users.length === 0 ? ''
    : users.length === 1 ? `${users[0]} is typing…`
      : users.length === 2 ? `${users[0]} and ${users[1]} are typing…`
        : 'Several people are typing…';
}

const MARKS = { sent: '✓', delivered: '✓✓', read: '✓✓' };
const MARK_TITLES = { sent: 'Sent', delivered: 'Delivered', read: 'Read' };

function renderMessages({ stick = false } = {}) {
  const conv = state.conversations.get(state.openId);
  const list = $('message-list');
  if (!conv) { list.replaceChildren(); return; }
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const rows = [];
  if (conv.floor > 0) {
    rows.push(h('button', { class: 'btn btn-ghost load-earlier', type: 'button', 'data-testid': 'load-earlier',
      onclick: () => loadEarlier(conv).catch((e) => toast(e.message, 'error')) }, 'Load earlier messages'));
  }
  const msgs = [...conv.messages.values()].sort((a, b) => a.seq - b.seq);
  let prevSender = null; let prevDay = null;
  for (const m of msgs) {
    const day = m.created_at ? dayFmt.format(Date.parse(m.created_at)) : null;
    if (day && day !== prevDay) { rows.push(h('div', { class: 'day-divider' }, day)); prevDay = day; prevSender = null; }
    const mine = m.sender_id === state.user;
    const first = m.sender_id !== prevSender;
    prevSender = m.sender_id;
    const mark = mine ? markOf(conv, m) : null;
    if (needsAttachmentInfo(m)) loadAttachments(conv, m);
    rows.push(h('div', {
      class: `msg-row${mine ? ' mine' : ''}${first ? ' first' : ''}${m.deleted ? ' deleted' : ''}`,
      'data-testid': 'message',
      'data-seq': m.seq,
      'data-message-id': m.message_id,
      'data-sender': m.sender_id,
      'data-status': mark || 'received',
      'data-edited': m.edited_at ? 'true' : null,
      'data-deleted': m.deleted ? 'true' : null,
      'data-reply-to': m.reply_to || null,
    },
    first && !mine && conv.kind === 'group' ? h('div', { class: 'msg-sender' }, m.sender_id) : null,
    h('div', { class: 'msg-line' },
      h('div', { class: 'bubble' },
        m.deleted ? null : renderReplyQuote(conv, m),
        m.deleted
          ? h('span', { class: 'msg-body tombstone', 'data-testid': 'tombstone' }, 'message deleted')
          : m.body ? h('span', { class: 'msg-body', 'data-testid': 'message-body' }, m.body) : null,
        !m.deleted && m.attachments && m.attachments.length ? renderAttachments(m) : null,
        h('div', { class: 'msg-meta' },
          m.edited_at && !m.deleted ? h('span', { class: 'edited', 'data-testid': 'edited-mark', title: `edited ${shortTime(m.edited_at)}` }, 'edited') : null,
          h('span', {}, shortTime(m.created_at)),
          mine ? h('span', { class: `mark mark-${mark}`, title: MARK_TITLES[mark], 'data-testid': 'message-mark' }, MARKS[mark]) : null)),
      renderActions(conv, m, mine)),
    m.deleted ? null : renderReactions(conv, m)));
  }
  // An edit, delete or reaction in flight shows once applied (its `event`); only a refused one here.
  const pend = pendingOf(conv.id).filter((p) => !p.action || p.status === 'failed');
  for (const p of pend) {
    const failed = p.status === 'failed';
    rows.push(h('div', {
      class: `msg-row mine${failed ? ' failed' : ' pending'}${prevSender !== state.user ? ' first' : ''}`,
      'data-testid': 'message',
      'data-client-msg-id': p.client_msg_id,
      'data-sender': state.user,
      'data-status': failed ? 'failed' : 'sending',
    },
    h('div', { class: 'bubble' },
      p.body ? h('span', { class: 'msg-body', 'data-testid': 'message-body' }, p.action ? `${p.action.kind}: ${p.body}` : p.body) : null,
      p.action && !p.body ? h('span', { class: 'msg-body' }, p.action.kind === 'reaction' ? `reaction ${p.action.emoji || '(removed)'}` : p.action.kind) : null,
      p.attachments && p.attachments.length ? h('span', { class: 'msg-body' }, `📎 ${p.attachments.length} file${p.attachments.length > 1 ? 's' : ''}`) : null,
      h('div', { class: 'msg-meta' },
        failed
          ? [h('span', { title: p.error ? p.error.message : '' }, 'Not sent'),
            h('button', { class: 'retry', type: 'button', onclick: () => state.client.retry(p.client_msg_id) }, 'Retry')]
          : h('span', { class: 'mark', title: 'Sending' }, '🕓')))));
    prevSender = state.user;
  }
  list.replaceChildren(...rows);
  if (stick || nearBottom) list.scrollTop = list.scrollHeight;
}

function renderAll() {
  sortConversations();
  renderConversations();
  renderHeader();
  renderMessages();
  renderTyping();
  updateTitle();
}

function updateTitle() {
  let total = 0;
  for (const c of state.conversations.values()) total += unreadOf(c);
  document.title = total > 0 ? `(${total}) Switchboard` : 'Switchboard';
}

function openConversation(id) {
  const conv = state.conversations.get(id);
  if (!conv) return;
  state.openId = id;
  $('chat-placeholder').hidden = true;
  $('chat-view').hidden = false;
  document.querySelector('.panes').classList.add('chat-open');
  $('chat-view').dataset.conversationId = id;
  renderHeader();
  if (state.compose && state.compose.convId !== id) setCompose(null);
  state.pickerFor = null;
  renderMessages({ stick: true });
  renderUploads();
  renderTyping();
  markReadIfVisible(conv);
  renderConversations();
  updateTitle();
  if (!conv.loaded) loadConversation(conv);
  $('message-input').focus();
}

// ---------------------------------------------------------------- actions
async function createConversation(body) {
  const c = body.kind === 'direct'
    ? await state.client.createDirect(body.members[0])
    : await state.client.createGroup(body.name, body.members);
  const conv = mergeConversation({ ...c, last_seq: c.last_seq || 0 });
  conv.createdLocally = conv.createdLocally || Date.now();
  sortConversations();
  renderConversations();
  openConversation(conv.id);
  loadConversation(conv);
  fetchPresence();
  return conv;
}

function transportOption() {
  const t = new URLSearchParams(location.search).get('transport');
  return t === 'sse' || t === 'websocket' ? t : 'auto';
}

async function login(user) {
  // A token first: a name the server refuses fails the sign-in here, not in a reconnect loop.
  await devToken(user);
  state.user = user;
  try { localStorage.setItem('switchboard.user', user); } catch (_) { /* ignore */ }
  state.conversations = new Map();
  state.presence = new Map();
  state.openId = null;
  state.everConnected = false;
  state.offline = false;
  const client = new SwitchboardClient({
    baseUrl: '',
    getToken: () => devToken(user),
    transport: transportOption(),
    firstSyncLimit: INITIAL_WINDOW,
  });
  state.client = client;
  state.offs = [
    client.on('state', onState),
    client.on('hello', onHello),
    client.on('message', onMessage),
    client.on('event', onEvent),
    client.on('receipt', onReceipt),
    client.on('presence', onPresence),
    client.on('typing', onTyping),
    client.on('sendFailed', onSendFailed),
    client.on('error', onError),
    client.on('transport', () => setConn(state.conn)),
    client.on('outbox', () => {
      sortConversations();
      renderConversations();
      if (state.openId) renderMessages();
    }),
  ];
  $('login').hidden = true;
  $('app').hidden = false;
  $('current-user').textContent = user;
  avatar($('me-avatar'), user);
  setConn('connecting');
  // The outbox of this user from an earlier page (unsent messages) shows at once.
  await client.load().catch(() => undefined);
  try {
    for (const c of await client.allConversations()) mergeConversation(c);
  } catch (e) {
    toast(`Could not load conversations: ${e.message}`, 'error');
  }
  renderAll();
  fetchPresence();
  client.connect().catch(() => undefined);
}

function logout() {
  if (state.client) {
    for (const off of state.offs) off();
    state.client.close();
  }
  state.client = null;
  state.offs = [];
  state.user = null;
  state.uploads = [];
  setCompose(null);
  setConn('offline');
  $('app').hidden = true;
  $('login').hidden = false;
  $('chat-view').hidden = true;
  $('chat-placeholder').hidden = false;
  $('login-input').focus();
}

// "Go offline": the SDK's disconnect(); sends keep queueing in the outbox, and go out (once)
// when we are back.
function toggleOffline() {
  if (!state.client) return;
  state.offline = !state.offline;
  if (state.offline) state.client.disconnect();
  else state.client.connect().catch(() => undefined);
  setConn(state.offline ? 'offline' : state.conn);
}

function wire() {
  try { $('login-input').value = localStorage.getItem('switchboard.user') || ''; } catch (_) { /* ignore */ }

  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const user = $('login-input').value.trim();
    const err = $('login-error');
    err.hidden = true;
    if (!USER_RE.test(user)) {
      err.textContent = 'Use 1-64 letters, digits, "_", "." or "-".';
      err.hidden = false;
      return;
    }
    $('login-button').disabled = true;
    try {
      await login(user);
    } catch (ex) {
      err.textContent = `Sign-in failed: ${ex.message}`;
      err.hidden = false;
      $('login').hidden = false;
      $('app').hidden = true;
    } finally {
      $('login-button').disabled = false;
    }
  });

  $('logout-button').addEventListener('click', logout);
  $('offline-button').addEventListener('click', toggleOffline);
  $('back-button').addEventListener('click', () => document.querySelector('.panes').classList.remove('chat-open'));

  $('new-direct-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const peer = $('new-direct-input').value.trim();
    if (!peer) return;
    if (!USER_RE.test(peer)) { toast('That is not a valid user name', 'error'); return; }
    try {
      await createConversation({ kind: 'direct', members: [peer] });
      $('new-direct-input').value = '';
    } catch (ex) {
      toast(`Could not start the chat: ${ex.message}`, 'error');
    }
  });

  $('new-group-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = $('new-group-name').value.trim();
    const members = $('new-group-members').value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
    const bad = members.find((m) => !USER_RE.test(m));
    if (bad) { toast(`"${bad}" is not a valid user name`, 'error'); return; }
    try {
      await createConversation({ kind: 'group', name, members });
      $('new-group-name').value = '';
      $('new-group-members').value = '';
      $('new-group').open = false;
    } catch (ex) {
      toast(`Could not create the group: ${ex.message}`, 'error');
    }
  });

  const input = $('message-input');
  const autosize = () => { input.style.height = 'auto'; input.style.height = `${Math.min(input.scrollHeight, 140)}px`; };
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const body = input.value;
    if (!sendMessage(body)) return;
    input.value = '';
    autosize();
    input.focus();
  });
  $('composer-cancel').addEventListener('click', () => {
    if (state.compose && state.compose.kind === 'edit') input.value = '';
    setCompose(null);
  });
  $('attach-button').addEventListener('click', () => $('file-input').click());
  $('file-input').addEventListener('change', (e) => {
    uploadFiles([...e.target.files]);
    e.target.value = '';
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.compose) {
      if (state.compose.kind === 'edit') input.value = '';
      setCompose(null);
      return;
    }
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  input.addEventListener('input', () => {
    autosize();
    // Throttled (one per conversation every 2 s) and never queued by the SDK.
    if (state.openId && input.value && state.client) state.client.typing(state.openId);
  });

  document.addEventListener('visibilitychange', () => {
    const conv = state.conversations.get(state.openId);
    if (conv && document.visibilityState === 'visible') { markReadIfVisible(conv); renderConversations(); updateTitle(); }
  });
  // Refresh "last seen" and typing lines now and then.
  setInterval(() => { if (state.openId) { renderHeader(); renderTyping(); } }, 30000);
}

wire();
