// Switchboard demo web client. Plain JavaScript, no build step, served by nginx at `/`.
//
// Flow (SPEC sections 2-5): POST /api/v1/dev/token -> GET /api/v1/socket-server -> WebSocket to
// the returned `url` with `?token=` -> REST for conversations and history (Bearer token).
// Reconnects with exponential backoff and jitter, asking the registry for a server each time,
// then resyncs every conversation from its last contiguous `seq` and resends unsent messages
// with their original `client_msg_id` (the server deduplicates them).
'use strict';

(() => {
  const HISTORY_PAGE = 200;      // messages per history request while syncing
  const INITIAL_WINDOW = 100;    // how many recent messages a conversation starts with
  const PING_EVERY_MS = 20000;
  const SILENCE_LIMIT_MS = 45000; // no frame at all for this long: the socket is dead
  const BACKOFF_MIN_MS = 250;
  const BACKOFF_MAX_MS = 10000;
  const TYPING_SEND_EVERY_MS = 2000;
  const TYPING_SHOW_MS = 3000;
  const USER_RE = /^[A-Za-z0-9_.|@+-]{1,128}$/;

  // ---------------------------------------------------------------- state
  const state = {
    user: null,
    token: null,
    tokenExpiresAt: 0,
    ws: null,
    helloed: false,
    serverId: null,
    conn: 'offline',            // connecting | connected | reconnecting | offline
    attempt: 0,
    reconnectTimer: null,
    pingTimer: null,
    followUpTimer: null,
    lastFrameAt: 0,
    everConnected: false,
    conversations: new Map(),   // id -> conversation (see newConversation)
    order: [],                  // conversation ids, most recent first
    pending: new Map(),         // client_msg_id -> {conversation_id, body, createdAt, failed}
    presence: new Map(),        // user_id -> {status, last_seen}
    openId: null,
    lastTypingSentAt: new Map(), // conversation id -> when we last sent `typing`
    refreshing: null,
    stopped: true,
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

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
    return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }

  // ---------------------------------------------------------------- toasts
  function toast(text, kind = 'info', ms = 5000) {
    const el = h('div', { class: `toast ${kind}`, 'data-testid': 'toast', role: kind === 'error' ? 'alert' : 'status' }, text);
    $('toasts').append(el);
    setTimeout(() => el.remove(), ms);
    while ($('toasts').children.length > 4) $('toasts').firstChild.remove();
  }

  // ---------------------------------------------------------------- REST
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function request(method, path, body, { auth = true, retried = false } = {}) {
    const headers = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (auth) headers.authorization = `Bearer ${state.token}`;
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), 10000);
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: ctrl.signal,
      });
    } catch (e) {
      throw new ApiError(0, 'network', 'The server could not be reached');
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try { data = await resp.json(); } catch (_) { /* not JSON */ }
    if (resp.ok) return data;
    if (resp.status === 401 && auth && !retried && state.user) {
      await mintToken(state.user);
      return request(method, path, body, { auth, retried: true });
    }
    const err = (data && data.error) || {};
    throw new ApiError(resp.status, err.code || 'http_' + resp.status, err.message || `HTTP ${resp.status}`);
  }

  async function mintToken(user) {
    const data = await request('POST', '/api/v1/dev/token', { user_id: user }, { auth: false });
    state.token = data.token;
    state.tokenExpiresAt = Date.parse(data.expires_at) || (Date.now() + 3600e3);
  }

  async function ensureFreshToken() {
    if (!state.token || state.tokenExpiresAt - Date.now() < 60000) await mintToken(state.user);
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
      floor,                 // messages below floor+1 are not loaded ("load earlier")
      contig: floor,         // every seq in floor+1..=contig is loaded
      messages: new Map(),   // seq -> message
      ids: new Set(),        // message ids, for dedupe
      readSeq: 0,            // my cumulative read position
      serverUnread: Number(c.unread || 0),
      readSent: 0,
      deliveredSent: 0,
      receipts: new Map(),   // user_id -> {delivered, read}
      typing: new Map(),     // user_id -> expiry time
      syncing: null,
      syncAgain: false,
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
      // No receipts in the listing: "nothing unread" still tells where we have read to.
      conv.readSeq = Math.max(conv.readSeq, conv.lastSeq);
    }
    for (const r of c.receipts || []) {
      if (r.user_id === state.user) {
        conv.readSeq = Math.max(conv.readSeq, Number(r.read_seq || 0));
        conv.readSent = Math.max(conv.readSent, Number(r.read_seq || 0));
        conv.deliveredSent = Math.max(conv.deliveredSent, Number(r.delivered_seq || 0));
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
    if (!conv.loaded) return conv.serverUnread;
    let n = 0;
    for (const m of conv.messages.values()) if (m.seq > conv.readSeq && m.sender_id !== state.user) n++;
    // Unread messages below the loaded window still count.
    return n + (conv.floor > conv.readSeq ? Math.max(0, conv.serverUnread - n) : 0);
  }

  function sortConversations() {
    const key = (c) => {
      const m = lastMessage(c);
      const pendingAt = [...state.pending.values()].filter((p) => p.conversation_id === c.id)
        .reduce((a, p) => Math.max(a, p.createdAt), 0);
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
        const data = await request('GET', '/api/v1/conversations');
        const fresh = [];
        for (const c of data.conversations || []) {
          const known = state.conversations.has(c.id);
          const conv = mergeConversation(c);
          if (!known) fresh.push(conv);
        }
        fetchPresence();
        renderAll();
        return fresh;
      } finally {
        state.refreshing = null;
      }
    })();
    return state.refreshing;
  }

  // Fetches history after the last contiguous seq until caught up. One sync per conversation
  // at a time; a request for another sync while one runs makes it go round once more.
  function syncConversation(conv) {
    if (conv.syncing) { conv.syncAgain = true; return conv.syncing; }
    conv.syncing = (async () => {
      try {
        do {
          conv.syncAgain = false;
          for (;;) {
            const after = conv.contig;
            const data = await request('GET',
              `/api/v1/conversations/${encodeURIComponent(conv.id)}/messages?after_seq=${after}&limit=${HISTORY_PAGE}`);
            const list = data.messages || [];
            for (const m of list) addMessage(conv, m, { fromHistory: true });
            conv.loaded = true;
            if (list.length < HISTORY_PAGE || conv.contig === after) break;
          }
        } while (conv.syncAgain);
        afterMessagesChanged(conv);
      } catch (e) {
        if (e.status === 403 || e.status === 404) {
          state.conversations.delete(conv.id);
          if (state.openId === conv.id) state.openId = null;
          renderAll();
        } else {
          console.warn('history sync failed', conv.id, e);
        }
      } finally {
        conv.syncing = null;
      }
    })();
    return conv.syncing;
  }

  async function loadEarlier(conv) {
    if (conv.floor <= 0) return;
    const from = Math.max(0, conv.floor - INITIAL_WINDOW);
    const data = await request('GET',
      `/api/v1/conversations/${encodeURIComponent(conv.id)}/messages?after_seq=${from}&limit=${conv.floor - from}`);
    for (const m of data.messages || []) addMessage(conv, m, { fromHistory: true });
    conv.floor = from;
    const list = $('message-list');
    const before = list.scrollHeight - list.scrollTop;
    renderMessages();
    list.scrollTop = list.scrollHeight - before;
  }

  // Inserts a message (from a frame, `sent`, or history). Returns true if it was new.
  function addMessage(conv, m, { fromHistory = false } = {}) {
    const seq = Number(m.seq);
    if (m.client_msg_id && state.pending.has(m.client_msg_id) && m.sender_id === state.user) {
      // Stored by the server although our `sent` never arrived: no longer pending.
      state.pending.delete(m.client_msg_id);
      savePending();
    }
    if (conv.ids.has(m.message_id) || conv.messages.has(seq)) return false;
    conv.messages.set(seq, {
      message_id: m.message_id, seq, sender_id: m.sender_id, body: m.body,
      created_at: m.created_at, client_msg_id: m.client_msg_id,
    });
    conv.ids.add(m.message_id);
    conv.lastSeq = Math.max(conv.lastSeq, seq);
    if (seq <= conv.floor) return true;
    while (conv.messages.has(conv.contig + 1)) conv.contig++;
    if (m.sender_id && conv.typing.delete(m.sender_id)) renderTyping();
    if (!fromHistory && seq > conv.contig + 1) {
      // A gap: fetch what lies between the last contiguous seq and this one.
      syncConversation(conv);
    }
    return true;
  }

  function afterMessagesChanged(conv) {
    sendReceipts(conv);
    sortConversations();
    renderConversations();
    if (state.openId === conv.id) renderMessages();
    updateTitle();
  }

  // delivered: everything received; read: everything shown in the open, visible conversation.
  function sendReceipts(conv) {
    if (!wsReady()) return;
    if (conv.contig > conv.deliveredSent && conv.contig > 0) {
      wsSend({ type: 'delivered', conversation_id: conv.id, seq: conv.contig });
      conv.deliveredSent = conv.contig;
    }
    const visible = document.visibilityState === 'visible';
    if (visible && state.openId === conv.id && conv.contig > conv.readSent && conv.contig > 0) {
      wsSend({ type: 'read', conversation_id: conv.id, seq: conv.contig });
      conv.readSent = conv.contig;
    }
    if (visible && state.openId === conv.id) {
      conv.readSeq = Math.max(conv.readSeq, conv.contig);
      conv.serverUnread = 0;
    }
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

  // ---------------------------------------------------------------- pending messages
  function pendingKey() { return `switchboard.pending.${state.user}`; }

  function savePending() {
    try {
      localStorage.setItem(pendingKey(), JSON.stringify([...state.pending.entries()]));
    } catch (_) { /* storage unavailable */ }
  }

  function loadPending() {
    try {
      const raw = localStorage.getItem(pendingKey());
      state.pending = new Map(raw ? JSON.parse(raw) : []);
      for (const p of state.pending.values()) p.failed = false;
    } catch (_) {
      state.pending = new Map();
    }
  }

  function sendMessage(body) {
    const conv = state.conversations.get(state.openId);
    if (!conv || !body.trim()) return;
    const id = uuid();
    state.pending.set(id, { conversation_id: conv.id, body, createdAt: Date.now(), failed: false });
    savePending();
    transmit(id);
    sortConversations();
    renderConversations();
    renderMessages({ stick: true });
  }

  function transmit(clientMsgId) {
    const p = state.pending.get(clientMsgId);
    if (!p || !wsReady()) return;
    p.failed = false;
    p.sentAt = Date.now();
    wsSend({ type: 'send', conversation_id: p.conversation_id, client_msg_id: clientMsgId, body: p.body });
  }

  function resendPending({ olderThanMs = 0 } = {}) {
    const now = Date.now();
    for (const [id, p] of state.pending) {
      if (!state.conversations.has(p.conversation_id) || p.failed) continue;
      if (olderThanMs && p.sentAt && now - p.sentAt < olderThanMs) continue;
      transmit(id);
    }
  }

  // ---------------------------------------------------------------- presence
  async function fetchPresence() {
    const users = new Set();
    for (const c of state.conversations.values()) for (const m of otherMembers(c)) users.add(m);
    if (users.size === 0) return;
    const qs = [...users].slice(0, 200).map((u) => `user_id=${encodeURIComponent(u)}`).join('&');
    try {
      const data = await request('GET', `/api/v1/presence?${qs}`);
      for (const p of (data && data.presence) || []) {
        state.presence.set(p.user_id, { status: p.status, last_seen: p.last_seen });
      }
      renderConversations();
      renderHeader();
    } catch (_) {
      // Presence is optional (older servers answer 404): the dots just stay grey.
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

  // ---------------------------------------------------------------- WebSocket
  function wsReady() {
    return state.ws && state.ws.readyState === WebSocket.OPEN && state.helloed;
  }

  function wsSend(frame) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
  }

  function setConn(conn) {
    state.conn = conn;
    const el = $('connection-status');
    el.dataset.state = conn;
    el.className = `pill pill-${conn}`;
    el.textContent = { connected: 'Connected', connecting: 'Connecting…', reconnecting: 'Reconnecting…', offline: 'Offline' }[conn];
    $('server-id').textContent = conn === 'connected' && state.serverId ? state.serverId : '—';
  }

  function socketUrl(url) {
    // A server advertised on a wildcard address is reached through this page's host.
    const u = new URL(url, location.href);
    if (u.hostname === '0.0.0.0' || u.hostname === '[::]') u.hostname = location.hostname;
    u.searchParams.set('token', state.token);
    return u.toString();
  }

  async function connect() {
    if (state.stopped) return;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    setConn(state.everConnected ? 'reconnecting' : 'connecting');
    let assignment;
    try {
      await ensureFreshToken();
      assignment = await request('GET', '/api/v1/socket-server', undefined, { auth: false });
    } catch (e) {
      if (e.status === 503) console.warn('no socket server has room:', e.message);
      scheduleReconnect();
      return;
    }
    if (state.stopped) return;
    let ws;
    try {
      ws = new WebSocket(socketUrl(assignment.url));
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.helloed = false;
    ws.onmessage = (ev) => { if (state.ws === ws) onFrame(ev.data); };
    ws.onclose = () => onSocketGone(ws);
    ws.onerror = () => onSocketGone(ws);
  }

  function onSocketGone(ws) {
    if (state.ws !== ws) return;
    state.ws = null;
    state.helloed = false;
    clearInterval(state.pingTimer);
    try { ws.close(); } catch (_) { /* already closed */ }
    if (state.stopped) return;
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (state.stopped || state.reconnectTimer) return;
    setConn(state.everConnected ? 'reconnecting' : 'connecting');
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    const delay = cap / 2 + Math.random() * cap / 2; // "equal jitter"
    state.attempt = Math.min(state.attempt + 1, 16);
    state.reconnectTimer = setTimeout(() => { state.reconnectTimer = null; connect(); }, delay);
  }

  function startKeepalive() {
    clearInterval(state.pingTimer);
    state.pingTimer = setInterval(() => {
      if (!state.ws) return;
      if (Date.now() - state.lastFrameAt > SILENCE_LIMIT_MS) {
        onSocketGone(state.ws);
        return;
      }
      wsSend({ type: 'ping' });
    }, PING_EVERY_MS);
  }

  async function onHello(frame) {
    state.helloed = true;
    state.serverId = frame.server_id;
    state.attempt = 0;
    const reconnect = state.everConnected;
    state.everConnected = true;
    setConn('connected');
    startKeepalive();
    resendPending();
    await resync();
    // Messages sent while we were away may reach the history store a moment after we ask;
    // one more pass shortly after a reconnect picks those up.
    if (reconnect) {
      clearTimeout(state.followUpTimer);
      state.followUpTimer = setTimeout(() => { if (wsReady()) resync(); }, 3000);
    }
  }

  async function resync() {
    try {
      await refreshConversations();
    } catch (e) {
      console.warn('conversation list failed', e);
    }
    await Promise.all([...state.conversations.values()].map((c) => syncConversation(c)));
    for (const c of state.conversations.values()) sendReceipts(c);
    renderAll();
  }

  function onFrame(text) {
    state.lastFrameAt = Date.now();
    let f;
    try { f = JSON.parse(text); } catch (_) { return; }
    switch (f.type) {
      case 'hello': onHello(f); break;
      case 'pong': break;
      case 'sent': onSent(f); break;
      case 'message': onMessage(f); break;
      case 'receipt': onReceipt(f); break;
      case 'presence': onPresence(f); break;
      case 'typing': onTyping(f); break;
      case 'error': onError(f); break;
      default: break;
    }
  }

  function onSent(f) {
    const p = state.pending.get(f.client_msg_id);
    const conv = state.conversations.get(f.conversation_id);
    if (p) { state.pending.delete(f.client_msg_id); savePending(); }
    if (!conv) return;
    if (p) {
      addMessage(conv, {
        message_id: f.message_id, seq: f.seq, sender_id: state.user, body: p.body,
        created_at: f.created_at, client_msg_id: f.client_msg_id,
      });
    }
    afterMessagesChanged(conv);
  }

  async function onMessage(f) {
    let conv = state.conversations.get(f.conversation_id);
    if (!conv) {
      // Someone started a conversation with us: learn about it, then take its history.
      // Twice at most: a listing already under way may predate the conversation.
      for (let i = 0; i < 2 && !state.conversations.has(f.conversation_id); i++) {
        try { await refreshConversations(); } catch (_) { /* the next resync catches up */ }
      }
      conv = state.conversations.get(f.conversation_id);
      if (!conv) return;
      await syncConversation(conv);
    }
    addMessage(conv, f);
    afterMessagesChanged(conv);
  }

  function onReceipt(f) {
    const conv = state.conversations.get(f.conversation_id);
    if (!conv) return;
    if (f.user_id === state.user) {
      // Our other device: reading there clears the unread count here.
      if (f.kind === 'read') { conv.readSeq = Math.max(conv.readSeq, f.seq); conv.readSent = Math.max(conv.readSent, f.seq); }
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

  const RETRYABLE = new Set(['unavailable', 'rate_limited']);
  function onError(f) {
    if (f.client_msg_id && state.pending.has(f.client_msg_id)) {
      const p = state.pending.get(f.client_msg_id);
      if (RETRYABLE.has(f.code)) {
        setTimeout(() => transmit(f.client_msg_id), 1000 + Math.random() * 1000);
      } else {
        p.failed = true;
        p.error = f.message;
        if (state.openId === p.conversation_id) renderMessages();
      }
    }
    toast(h('span', {}, f.message || 'Something went wrong', ' ', h('code', {}, f.code || '')), 'error');
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
      let preview = last ? `${last.sender_id === state.user ? 'You: ' : conv.kind === 'group' ? last.sender_id + ': ' : ''}${last.body}` : (conv.kind === 'group' ? `${conv.members.length} members` : 'No messages yet');
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
      rows.push(h('div', {
        class: `msg-row${mine ? ' mine' : ''}${first ? ' first' : ''}`,
        'data-testid': 'message',
        'data-seq': m.seq,
        'data-message-id': m.message_id,
        'data-sender': m.sender_id,
        'data-status': mark || 'received',
      },
      first && !mine && conv.kind === 'group' ? h('div', { class: 'msg-sender' }, m.sender_id) : null,
      h('div', { class: 'bubble' },
        h('span', { class: 'msg-body', 'data-testid': 'message-body' }, m.body),
        h('div', { class: 'msg-meta' },
          h('span', {}, shortTime(m.created_at)),
          mine ? h('span', { class: `mark mark-${mark}`, title: MARK_TITLES[mark], 'data-testid': 'message-mark' }, MARKS[mark]) : null))));
    }
    const pend = [...state.pending.entries()].filter(([, p]) => p.conversation_id === conv.id)
      .sort((a, b) => a[1].createdAt - b[1].createdAt);
    for (const [id, p] of pend) {
      rows.push(h('div', {
        class: `msg-row mine${p.failed ? ' failed' : ' pending'}${prevSender !== state.user ? ' first' : ''}`,
        'data-testid': 'message',
        'data-client-msg-id': id,
        'data-sender': state.user,
        'data-status': p.failed ? 'failed' : 'sending',
      },
      h('div', { class: 'bubble' },
        h('span', { class: 'msg-body', 'data-testid': 'message-body' }, p.body),
        h('div', { class: 'msg-meta' },
          p.failed
            ? [h('span', { title: p.error || '' }, 'Not sent'), h('button', { class: 'retry', type: 'button', onclick: () => transmit(id) }, 'Retry')]
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
    renderMessages({ stick: true });
    renderTyping();
    sendReceipts(conv);
    renderConversations();
    updateTitle();
    if (!conv.loaded) syncConversation(conv);
    $('message-input').focus();
  }

  // ---------------------------------------------------------------- actions
  async function createConversation(body) {
    const c = await request('POST', '/api/v1/conversations', body);
    const conv = mergeConversation({ ...c, last_seq: c.last_seq || 0 });
    conv.createdLocally = conv.createdLocally || Date.now();
    sortConversations();
    renderConversations();
    openConversation(conv.id);
    syncConversation(conv);
    fetchPresence();
    return conv;
  }

  async function login(user) {
    state.user = user;
    await mintToken(user);
    try { localStorage.setItem('switchboard.user', user); } catch (_) { /* ignore */ }
    state.stopped = false;
    state.conversations = new Map();
    state.presence = new Map();
    state.openId = null;
    state.everConnected = false;
    state.attempt = 0;
    loadPending();
    $('login').hidden = true;
    $('app').hidden = false;
    $('current-user').textContent = user;
    avatar($('me-avatar'), user);
    try {
      const list = await request('GET', '/api/v1/conversations');
      for (const c of list.conversations || []) mergeConversation(c);
    } catch (e) {
      toast(`Could not load conversations: ${e.message}`, 'error');
    }
    renderAll();
    fetchPresence();
    connect();
  }

  function logout() {
    state.stopped = true;
    clearTimeout(state.reconnectTimer);
    clearTimeout(state.followUpTimer);
    clearInterval(state.pingTimer);
    state.reconnectTimer = null;
    if (state.ws) { const ws = state.ws; state.ws = null; ws.close(1000); }
    state.token = null;
    state.user = null;
    state.serverId = null;
    setConn('offline');
    $('app').hidden = true;
    $('login').hidden = false;
    $('chat-view').hidden = true;
    $('chat-placeholder').hidden = false;
    $('login-input').focus();
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
      if (!body.trim()) return;
      sendMessage(body);
      input.value = '';
      autosize();
      input.focus();
    });
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $('composer').requestSubmit();
      }
    });
    input.addEventListener('input', () => {
      autosize();
      if (!state.openId || !input.value || !wsReady()) return;
      const now = Date.now();
      if (now - (state.lastTypingSentAt.get(state.openId) || 0) >= TYPING_SEND_EVERY_MS) {
        state.lastTypingSentAt.set(state.openId, now);
        wsSend({ type: 'typing', conversation_id: state.openId });
      }
    });

    document.addEventListener('visibilitychange', () => {
      const conv = state.conversations.get(state.openId);
      if (conv && document.visibilityState === 'visible') { sendReceipts(conv); renderConversations(); updateTitle(); }
    });
    window.addEventListener('online', () => {
      if (!state.stopped && !state.ws) { state.attempt = 0; clearTimeout(state.reconnectTimer); state.reconnectTimer = null; connect(); }
    });
    // A message with no `sent` after a while is sent again (same client_msg_id: no duplicate).
    setInterval(() => { if (wsReady()) resendPending({ olderThanMs: 10000 }); }, 5000);
    // Refresh "last seen" and typing lines now and then.
    setInterval(() => { if (state.openId) { renderHeader(); renderTyping(); } }, 30000);
  }

  wire();
})();
