// Generated from clients/js/src/client.ts by clients/js/vendor-demo.sh: do not edit.
/**
 * `SwitchboardClient`: one logical connection to a Switchboard deployment.
 *
 * The lifecycle is a loop of attempts (token, registry, socket, `hello`), each ending in a
 * close whose code decides the next delay. Everything an app sees goes through handlers
 * registered on the client, never on a socket, so a reconnect cannot duplicate them.
 */
import { DEFAULT_BACKOFF, fullJitterDelay, restartDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import { SwitchboardError } from './errors.js';
import { Outbox } from './outbox.js';
import { CLOSE, RETRYABLE_CODES, } from './protocol.js';
import { restCall } from './rest.js';
import { normalizeAttachments } from './rich.js';
import { putWithProgress, sizeOf } from './upload.js';
import { Sequencer } from './sequencer.js';
import { defaultStorage, readJson, writeJson } from './storage.js';
import { decodeToken, isExpired, refreshAt } from './token.js';
import { SseSocket, sseUrlOf } from './sse.js';
function deferred() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
        resolve = res;
        reject = rej;
    });
    // Handled here so a fire-and-forget caller never sees an unhandled rejection; an awaiting caller still gets it.
    promise.catch(() => undefined);
    return { promise, resolve, reject };
}
const WS_OPEN = 1;
/** How long the HTTP fallback is remembered for an origin before WebSocket is tried again. */
const TRANSPORT_MEMORY_MS = 24 * 60 * 60 * 1000;
const TOKEN_MARGIN = { minMarginMs: 5_000, maxMarginMs: 60_000 };
/**
 * How long a conversation's stored `last_seq` may stay below the local cursor before that is a
 * reset of the store: the store is written from the log, behind the `sent` acks and live
 * frames, so right after a burst (a reconnect mid-burst) it trails the cursor for a moment.
 */
const RESET_CONFIRM_MS = 10_000;
/** docs/protocol.md "Token lifetime": the token's `exp` passed without a `refresh`. */
export const CLOSE_TOKEN_EXPIRED = 4401;
/** docs/protocol.md "Token lifetime": the user's sessions were ended (logout everywhere, a ban). */
export const CLOSE_SESSIONS_ENDED = 4403;
export class SwitchboardClient {
    opts;
    WS;
    fetchFn;
    XHR;
    /** `attachmentsOf` answers by `conversation:seq`, kept until their URLs are near expiry (bounded, oldest out). */
    attachmentCache = new Map();
    storage;
    backoff;
    reconnectEnabled;
    pingInterval;
    pingTimeout;
    events = new Emitter();
    _state = 'disconnected';
    _userId;
    _serverId;
    // Lifecycle.
    epoch = 0;
    connectDeferred = null;
    ws = null;
    helloed = false;
    everConnected = false;
    attempt = 0;
    failedUpgrades = 0;
    refreshedAfterRefusal = false;
    endAttempt = null;
    wake = null;
    // Transport.
    _transport = 'websocket';
    transportLoaded = false;
    /** The current attempt is the one that decides whether the other transport works. */
    transportTrial = false;
    /** The server the last attempt used (a trial goes to the same one). */
    lastAssignment = null;
    trialAssignment = null;
    // Token.
    token;
    tokenInfo = { sub: undefined, exp: undefined, iat: undefined };
    tokenStale = false;
    tokenInflight = null;
    refusedToken;
    tokenTrustedUntil = 0;
    /** The token of an in-band `refresh` awaiting its answer. */
    refreshPending = null;
    /** The server answered `refresh` with `bad_request` (an older server): refresh by reconnecting. */
    inBandUnsupported = false;
    // Per-user state, loaded once.
    readyPromise = null;
    outboxStore = null;
    sequencer = new Sequencer();
    receipts = new Map();
    known = new Set();
    /** Conversations whose stored `last_seq` was seen below the cursor: when, and that cursor. */
    storeBehind = new Map();
    sendWaiters = new Map();
    fills = new Map();
    lastTyping = new Map();
    // Timers (one of each; every one cleared by stopTimers()).
    timers = {
        ping: undefined,
        pong: undefined,
        resend: undefined,
        receipts: undefined,
        followUp: undefined,
        resetCheck: undefined,
        token: undefined,
        cursors: undefined,
    };
    awaitingPong = false;
    pingCounter = 0;
    detachBrowser = null;
    constructor(options) {
        if (!options || typeof options.getToken !== 'function') {
            throw new TypeError('SwitchboardClient needs { baseUrl, getToken }');
        }
        this.opts = {
            baseUrl: (options.baseUrl ?? '').replace(/\/+$/, ''),
            getToken: options.getToken,
            storagePrefix: options.storagePrefix ?? 'switchboard',
            connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
            sendTimeoutMs: options.sendTimeoutMs ?? 5_000,
            resendPerSecond: options.resendPerSecond ?? 100,
            probeAfterFailures: options.probeAfterFailures ?? 2,
            autoDelivered: options.autoDelivered ?? true,
            typingIntervalMs: options.typingIntervalMs ?? 2_000,
            resync: options.resync ?? true,
            firstSyncLimit: options.firstSyncLimit ?? Number.POSITIVE_INFINITY,
            historyPageSize: Math.min(1000, Math.max(1, options.historyPageSize ?? 200)),
            random: options.random ?? Math.random,
            browserEvents: options.browserEvents ?? true,
            transport: options.transport ?? 'auto',
        };
        if (this.opts.transport !== 'auto')
            this._transport = this.opts.transport;
        this.WS = options.WebSocket ?? globalThis.WebSocket;
        const f = options.fetch ?? globalThis.fetch;
        if (!f)
            throw new TypeError('no fetch: pass options.fetch');
        // Unbound window.fetch throws "Illegal invocation" in browsers.
        this.fetchFn = options.fetch ?? ((input, init) => f.call(globalThis, input, init));
        this.XHR =
            options.XMLHttpRequest !== undefined
                ? options.XMLHttpRequest
                : (globalThis.XMLHttpRequest ?? null);
        this.storage = options.storage ?? defaultStorage();
        this.reconnectEnabled = options.reconnect !== false;
        this.backoff = { ...DEFAULT_BACKOFF, ...(options.reconnect || {}) };
        this.pingInterval = options.ping?.intervalMs ?? 20_000;
        this.pingTimeout = options.ping?.timeoutMs ?? 10_000;
        if (this.opts.browserEvents)
            this.attachBrowserEvents();
    }
    // ------------------------------------------------------------------ public surface
    get state() {
        return this._state;
    }
    /** The user id (the token's `sub`, or `hello`'s `user_id`). */
    get userId() {
        return this._userId;
    }
    /** The transport of the current (or next) connection. */
    get transport() {
        return this._transport;
    }
    /** The socket server of the current connection. */
    get serverId() {
        return this._serverId;
    }
    on(event, handler) {
        return this.events.on(event, handler);
    }
    /**
     * Starts connecting (and keeps reconnecting). Resolves at the first `hello`; rejects when
     * the attempt ends for good (`unauthorized`, `sessions_ended`) or `disconnect()`/`close()`
     * cancels it (`cancelled`). Calling it again while connecting or connected answers the same
     * promise and opens nothing (React StrictMode's double effects are safe).
     */
    connect() {
        if (this._state === 'closed')
            return Promise.reject(new SwitchboardError('closed', 'the client is closed'));
        if (this.connectDeferred && (this._state === 'connecting' || this._state === 'connected')) {
            return this.connectDeferred.promise;
        }
        const d = deferred();
        this.connectDeferred = d;
        const epoch = ++this.epoch;
        this.attempt = 0;
        this.failedUpgrades = 0;
        this.refreshedAfterRefusal = false;
        this.setState('connecting', 'connect', 'connect() called');
        void this.run(epoch);
        return d.promise;
    }
    /** Closes the connection and stops reconnecting; `connect()` starts again. The outbox stays. */
    disconnect() {
        if (this._state === 'closed')
            return;
        this.stop('disconnect', 'disconnect() called');
        this.setState('disconnected', 'disconnect', 'disconnect() called');
    }
    /** Like `disconnect()`, for good: pending `send()` promises reject (`closed`); entries stay stored for the next client. */
    close() {
        if (this._state === 'closed')
            return;
        this.stop('close', 'close() called');
        this.detachBrowser?.();
        this.detachBrowser = null;
        for (const [, d] of this.sendWaiters)
            d.reject(new SwitchboardError('closed', 'the client was closed'));
        this.sendWaiters.clear();
        void this.flushCursors();
        this.setState('closed', 'close', 'close() called');
    }
    /**
     * Sends a message: it is stored in the outbox first, then sent (now or at the next `hello`)
     * and resent until confirmed. Resolves to the server's `{message_id, seq, created_at}`.
     */
    send(conversationId, body, opts = {}) {
        const p = this.enqueue(conversationId, body, opts, {
            ...(opts.replyTo !== undefined ? { reply_to: opts.replyTo } : {}),
            ...(opts.attachments?.length ? { attachments: opts.attachments } : {}),
        });
        // Marked handled so a fire-and-forget send never raises an unhandled rejection; awaiting it still throws.
        p.catch(() => undefined);
        return p;
    }
    /**
     * Edits one of your messages, through the outbox like a send (numbered in the same sequence;
     * docs/protocol.md, "Message events"). Resolves to the edit's own `{message_id, seq}`.
     */
    edit(conversationId, messageId, body, opts = {}) {
        return this.enqueueAction(conversationId, body, opts, { kind: 'edit', message_id: messageId });
    }
    /** Deletes a message for everyone (yours; a group's owner or admins delete any). */
    deleteMessage(conversationId, messageId, opts = {}) {
        return this.enqueueAction(conversationId, '', opts, { kind: 'delete', message_id: messageId });
    }
    /** Sets your reaction to a message (one per user per message), or removes it with `null`. */
    react(conversationId, messageId, emoji, opts = {}) {
        return this.enqueueAction(conversationId, '', opts, { kind: 'reaction', message_id: messageId, emoji });
    }
    enqueueAction(conversationId, body, opts, action) {
        const p = this.enqueue(conversationId, body, opts, { action });
        p.catch(() => undefined);
        return p;
    }
    async enqueue(conversationId, body, opts, extra = {}) {
        if (this._state === 'closed')
            throw new SwitchboardError('closed', 'the client is closed');
        if (typeof conversationId !== 'string' || !conversationId) {
            throw new SwitchboardError('bad_request', 'conversationId must be a non-empty string');
        }
        if (typeof body !== 'string')
            throw new SwitchboardError('bad_request', 'body must be a string');
        if (body.includes('\u0000') || conversationId.includes('\u0000')) {
            throw new SwitchboardError('bad_request', 'text containing U+0000 cannot be stored');
        }
        if (new TextEncoder().encode(body).length > 65_536) {
            throw new SwitchboardError('too_large', 'body is over 65,536 bytes');
        }
        const ids = extra.attachments ?? [];
        if (ids.length > 10 || new Set(ids).size !== ids.length || ids.some((id) => typeof id !== 'string' || !id)) {
            throw new SwitchboardError('bad_request', 'attachments: at most 10 distinct attachment ids');
        }
        await this.ready();
        const outbox = this.outboxStore;
        const entry = await outbox.add(conversationId, body, Date.now(), opts.clientMsgId, extra);
        const d = deferred();
        this.sendWaiters.set(entry.client_msg_id, d);
        this.emitOutbox();
        this.transmit(entry);
        this.armResend();
        return d.promise;
    }
    /** The outbox, oldest first. */
    outbox() {
        return this.outboxStore?.list() ?? [];
    }
    /** Loads the persisted outbox and cursors (connect() and send() do it; call it to list the outbox before either). */
    async load() {
        await this.ready();
    }
    /** Sends a `failed` (or pending) entry again now, with the same `client_msg_id`. */
    async retry(clientMsgId) {
        await this.ready();
        const e = await this.outboxStore.retry(clientMsgId);
        if (!e)
            throw new SwitchboardError('not_found', `no outbox entry ${clientMsgId}`);
        this.emitOutbox();
        this.transmit(e);
        this.armResend();
    }
    /**
     * Removes an entry and rejects its `send()` promise (`cancelled`). A message already
     * transmitted may still have been accepted by the server: it then arrives as a message.
     */
    async cancel(clientMsgId) {
        await this.ready();
        const e = await this.outboxStore.remove(clientMsgId);
        if (!e)
            return false;
        this.sendWaiters.get(clientMsgId)?.reject(new SwitchboardError('cancelled', 'cancelled by the app'));
        this.sendWaiters.delete(clientMsgId);
        this.emitOutbox();
        return true;
    }
    /** Marks a conversation read up to `seq` (default: everything delivered). Sent now or at the next `hello`. */
    markRead(conversationId, seq) {
        const upTo = seq ?? this.sequencer.cursor(conversationId);
        if (!(upTo > 0))
            return;
        const r = this.receiptState(conversationId);
        if (upTo <= r.r)
            return;
        r.readWanted = Math.max(r.readWanted, upTo);
        this.flushReceipts();
    }
    /** A typing signal, throttled per conversation; dropped when not connected (never queued). */
    typing(conversationId) {
        const now = Date.now();
        if (!this.isLive())
            return false;
        if (now - (this.lastTyping.get(conversationId) ?? -Infinity) < this.opts.typingIntervalMs)
            return false;
        this.lastTyping.set(conversationId, now);
        this.write({ type: 'typing', conversation_id: conversationId });
        return true;
    }
    /** Sends a liveness ping now (also done on `visibilitychange` and `online`). */
    ping() {
        this.sendPing();
    }
    /** The contiguous cursor of a conversation: every `seq` up to it has been delivered. */
    cursor(conversationId) {
        return this.sequencer.cursor(conversationId);
    }
    // REST helpers ------------------------------------------------------
    /** One page of the caller's conversations. */
    listConversations(opts = {}) {
        const q = new URLSearchParams();
        if (opts.limit !== undefined)
            q.set('limit', String(opts.limit));
        if (opts.cursor)
            q.set('cursor', opts.cursor);
        const qs = q.toString();
        return this.rest(`/api/v1/conversations${qs ? `?${qs}` : ''}`);
    }
    /** Every conversation of the caller, all pages. */
    async allConversations() {
        const out = [];
        let cursor;
        for (;;) {
            const page = await this.listConversations({ limit: 1000, ...(cursor ? { cursor } : {}) });
            out.push(...page.conversations);
            if (!page.next_cursor)
                return out;
            cursor = page.next_cursor;
        }
    }
    createDirect(userId) {
        return this.rest('/api/v1/conversations', { method: 'POST', body: { kind: 'direct', members: [userId] } });
    }
    createGroup(name, members) {
        return this.rest('/api/v1/conversations', { method: 'POST', body: { kind: 'group', name, members } });
    }
    getConversation(id) {
        return this.rest(`/api/v1/conversations/${encodeURIComponent(id)}`);
    }
    addMember(conversationId, userId) {
        return this.rest(`/api/v1/conversations/${encodeURIComponent(conversationId)}/members`, {
            method: 'POST',
            body: { user_id: userId },
        });
    }
    async removeMember(conversationId, userId) {
        await this.rest(`/api/v1/conversations/${encodeURIComponent(conversationId)}/members/${encodeURIComponent(userId)}`, { method: 'DELETE' });
    }
    /** Raw history (not deduplicated nor delivered as events): `after_seq` ascending, up to `limit`. */
    async history(conversationId, opts = {}) {
        const q = new URLSearchParams({ after_seq: String(opts.afterSeq ?? 0), limit: String(opts.limit ?? 100) });
        const res = await this.rest(`/api/v1/conversations/${encodeURIComponent(conversationId)}/messages?${q}`);
        return res.messages;
    }
    /**
     * A page of history with the edits, deletes and reactions of its `seq` range
     * (`?events=true`): the messages in their current state, then the events, each list in
     * `seq` order; `limit` counts both.
     */
    async historyWithEvents(conversationId, opts = {}) {
        const q = new URLSearchParams({
            after_seq: String(opts.afterSeq ?? 0),
            limit: String(opts.limit ?? 100),
            events: 'true',
        });
        const res = await this.rest(`/api/v1/conversations/${encodeURIComponent(conversationId)}/messages?${q}`);
        return { messages: res.messages, events: res.events ?? [] };
    }
    async presence(userIds) {
        const q = new URLSearchParams();
        for (const u of userIds)
            q.append('user_id', u);
        const res = await this.rest(`/api/v1/presence?${q}`);
        return res.presence;
    }
    /**
     * Uploads a file for a message of `conversationId` (docs/protocol.md, "Attachments"): asks
     * for a pre-signed URL, then PUTs the bytes straight to the object store, reporting
     * `onProgress` as they leave (browsers: `XMLHttpRequest` upload progress; elsewhere the start
     * and the end). Resolves to the attachment (`id`, `filename`, `content_type`, `size`); send
     * it with `send(conversationId, body, { attachments: [a.id] })` before the URL's few minutes
     * pass. Errors: the API's codes (`too_large`, `attachment_refused`, `not_a_member`,
     * `not_found` without a store), `upload_failed` (the store's status), `network`, `timeout`,
     * `cancelled` (`signal`).
     */
    async uploadAttachment(conversationId, file, opts = {}) {
        const size = sizeOf(file);
        const blob = file;
        const filename = opts.filename ?? (typeof blob.name === 'string' && blob.name ? blob.name : 'file');
        const contentType = (opts.contentType ?? (typeof blob.type === 'string' && blob.type ? blob.type : 'application/octet-stream')).toLowerCase();
        const ticket = await this.rest(`/api/v1/conversations/${encodeURIComponent(conversationId)}/attachments`, {
            method: 'POST',
            body: { filename, content_type: contentType, size },
            ...(opts.signal ? { signal: opts.signal } : {}),
        });
        await putWithProgress({
            url: ticket.upload_url,
            headers: ticket.upload_headers ?? { 'content-type': contentType },
            body: file,
            total: size,
            ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
            ...(opts.signal ? { signal: opts.signal } : {}),
            timeoutMs: opts.timeoutMs ?? 60_000 + Math.ceil(size / 100),
            XHR: this.XHR,
            fetch: this.fetchFn,
        });
        return { id: ticket.attachment_id, filename, content_type: contentType, size };
    }
    /**
     * The attachments of the message `seq` with their metadata and download URLs, from its
     * history row (a live `message` carries the ids only). History trails live delivery by a
     * moment, so a row not stored yet is asked again for up to `waitMs` (default 5,000).
     * Answers are cached until their URLs are a minute from expiry; a deleted message has none.
     */
    attachmentsOf(conversationId, seq, opts = {}) {
        const key = `${conversationId}:${seq}`;
        const hit = this.attachmentCache.get(key);
        if (hit && Date.now() < hit.until)
            return hit.value;
        const value = this.fetchAttachments(conversationId, seq, opts.waitMs ?? 5_000);
        const entry = { until: Number.POSITIVE_INFINITY, value };
        this.attachmentCache.set(key, entry);
        while (this.attachmentCache.size > 500)
            this.attachmentCache.delete(this.attachmentCache.keys().next().value);
        value.then((list) => {
            const expiries = list.map((a) => Date.parse(a.url_expires_at ?? '')).filter((t) => Number.isFinite(t));
            entry.until = expiries.length ? Math.min(...expiries) - 60_000 : Number.POSITIVE_INFINITY;
        }, () => {
            if (this.attachmentCache.get(key) === entry)
                this.attachmentCache.delete(key);
        });
        return value;
    }
    async fetchAttachments(conversationId, seq, waitMs) {
        const deadline = Date.now() + waitMs;
        for (let delay = 100;; delay = Math.min(1_000, delay * 2)) {
            const rows = await this.history(conversationId, { afterSeq: seq - 1, limit: 1 });
            const row = rows[0];
            if (row && row.seq === seq)
                return normalizeAttachments(row.attachments) ?? [];
            if (Date.now() + delay > deadline) {
                throw new SwitchboardError('unavailable', `message ${seq} of ${conversationId} is not in history yet`);
            }
            await new Promise((r) => setTimeout(r, delay));
        }
    }
    /**
     * The API route that redirects (302) to a fresh download URL of an attachment; it needs the
     * bearer token, so a page uses the `url` of `attachmentsOf` in `<img>`/`<a>` instead.
     */
    attachmentRedirectPath(conversationId, attachmentId) {
        return `/api/v1/conversations/${encodeURIComponent(conversationId)}/attachments/${encodeURIComponent(attachmentId)}`;
    }
    /** An authenticated REST call to the deployment; a 401 refreshes the token once and retries. */
    async rest(path, opts = {}) {
        let token = await this.currentToken();
        try {
            return await restCall(this.fetchFn, this.url(path), { ...opts, token });
        }
        catch (e) {
            if (!(e instanceof SwitchboardError) || e.status !== 401)
                throw e;
            this.tokenStale = true;
            token = await this.currentToken();
            return restCall(this.fetchFn, this.url(path), { ...opts, token });
        }
    }
    // ------------------------------------------------------------------ lifecycle
    setState(state, code, reason, closeCode) {
        if (this._state === state)
            return;
        const previous = this._state;
        this._state = state;
        const change = { state, previous, code, reason };
        if (closeCode !== undefined)
            change.closeCode = closeCode;
        this.events.emit('state', change);
    }
    stop(code, reason, error) {
        this.epoch++;
        this.endAttempt?.({ helloed: this.helloed, code, reason });
        this.endAttempt = null;
        this.dropSocket(CLOSE.normal, reason);
        this.wake?.();
        this.wake = null;
        this.stopTimers();
        if (this.connectDeferred && this._state !== 'connected') {
            this.connectDeferred.reject(error ?? new SwitchboardError('cancelled', reason));
        }
        this.connectDeferred = null;
    }
    stopTimers() {
        clearInterval(this.timers.ping);
        clearTimeout(this.timers.pong);
        clearInterval(this.timers.resend);
        clearTimeout(this.timers.receipts);
        clearTimeout(this.timers.followUp);
        clearTimeout(this.timers.resetCheck);
        clearTimeout(this.timers.token);
        this.timers.ping = this.timers.pong = this.timers.resend = undefined;
        this.timers.receipts = this.timers.followUp = this.timers.resetCheck = this.timers.token = undefined;
        this.awaitingPong = false;
    }
    dropSocket(code, reason) {
        const ws = this.ws;
        this.ws = null;
        this.helloed = false;
        this._serverId = undefined;
        clearInterval(this.timers.ping);
        clearTimeout(this.timers.pong);
        clearInterval(this.timers.resend);
        this.timers.ping = this.timers.pong = this.timers.resend = undefined;
        this.awaitingPong = false;
        if (!ws)
            return;
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        try {
            ws.close(code, reason.slice(0, 120));
        }
        catch {
            /* already closing */
        }
    }
    /** Waits `ms`, or less when woken (`online`, `disconnect()`). */
    sleep(ms) {
        return new Promise((resolve) => {
            const t = setTimeout(done, ms);
            const self = this;
            function done() {
                clearTimeout(t);
                if (self.wake === done)
                    self.wake = null;
                resolve();
            }
            this.wake = done;
        });
    }
    async run(epoch) {
        let delay = 0;
        while (this.epoch === epoch) {
            if (delay > 0) {
                await this.sleep(delay);
                if (this.epoch !== epoch)
                    return;
            }
            const end = await this.attemptOnce(epoch);
            if (this.epoch !== epoch)
                return;
            if (this.transportTrial && !end.helloed) {
                // The other transport failed too, on the same server: an outage, not a blocked
                // transport. Back to the one we had.
                this.transportTrial = false;
                this.switchTransport(this._transport === 'sse' ? 'websocket' : 'sse', `trial failed: ${end.reason}`, false);
                this.failedUpgrades = 0;
            }
            else if (end.helloed) {
                this.attempt = 0;
                this.failedUpgrades = 0;
            }
            if (end.terminal) {
                this.stop(end.code, end.reason, end.terminal);
                this.setState('disconnected', end.code, end.reason, end.closeCode);
                this.events.emit('error', end.terminal);
                return;
            }
            this.setState('connecting', end.code, end.reason, end.closeCode);
            if (!this.reconnectEnabled && this.everConnected) {
                this.stop(end.code, end.reason);
                this.setState('disconnected', end.code, end.reason, end.closeCode);
                return;
            }
            if (end.refreshToken)
                this.tokenStale = true;
            if (end.upgradeFailed) {
                this.failedUpgrades++;
                if (this.failedUpgrades >= this.opts.probeAfterFailures) {
                    const verdict = await this.probeToken();
                    if (this.epoch !== epoch)
                        return;
                    if (verdict === 'refused') {
                        if (this.refreshedAfterRefusal) {
                            const err = new SwitchboardError('unauthorized', 'the server refuses every token getToken() answers');
                            this.stop('unauthorized', err.message, err);
                            this.setState('disconnected', 'unauthorized', err.message);
                            this.events.emit('error', err);
                            return;
                        }
                        this.refreshedAfterRefusal = true;
                        this.tokenStale = true;
                        this.failedUpgrades = 0;
                        delay = 0;
                        continue;
                    }
                    this.failedUpgrades = 0;
                    if (verdict === 'accepted' && this.opts.transport === 'auto' && this.lastAssignment) {
                        // The token is good and the REST API answers, yet connections fail: perhaps a
                        // proxy blocks this transport. One attempt over the other one, to the same server,
                        // tells that from a dead server.
                        this.trialAssignment = this.lastAssignment;
                        this.transportTrial = true;
                        const other = this._transport === 'sse' ? 'websocket' : 'sse';
                        this.switchTransport(other, `${this._transport} keeps failing while the REST API answers`, true);
                        this.events.emit('retry', { attempt: this.attempt, delayMs: 0, code: end.code, reason: `trying ${other}` });
                        delay = 0;
                        continue;
                    }
                }
            }
            if (end.immediate) {
                delay = 0;
            }
            else if (end.closeCode === CLOSE.restart && end.helloed) {
                delay = restartDelay(this.backoff, this.opts.random);
            }
            else {
                delay = fullJitterDelay(this.attempt, this.backoff, this.opts.random);
                this.attempt = Math.min(this.attempt + 1, 30);
            }
            this.events.emit('retry', { attempt: this.attempt, delayMs: delay, code: end.code, reason: end.reason });
        }
    }
    /** Asks the REST API, with the current token, whether the token is what the socket refused. */
    async probeToken() {
        const token = this.token;
        if (!token)
            return 'unknown';
        try {
            await restCall(this.fetchFn, this.url('/api/v1/conversations?limit=1'), { token });
            return 'accepted';
        }
        catch (e) {
            if (e instanceof SwitchboardError && e.status === 401) {
                this.refusedToken = token;
                return 'refused';
            }
            return 'unknown';
        }
    }
    attemptOnce(epoch) {
        return new Promise((resolve) => {
            let settled = false;
            const finish = (end) => {
                if (settled)
                    return;
                settled = true;
                if (this.endAttempt === finish)
                    this.endAttempt = null;
                const wasHelloed = this.helloed;
                this.dropSocket(end.closeCode && end.closeCode >= 3000 ? end.closeCode : CLOSE.normal, end.reason);
                if (wasHelloed)
                    this.onConnectionLost();
                resolve({ ...end, helloed: end.helloed || wasHelloed });
            };
            this.endAttempt = finish;
            void (async () => {
                let token;
                try {
                    // The first attempt also loads this user's outbox and cursors (named by the token's sub).
                    await this.ready();
                    token = await this.currentToken();
                }
                catch (e) {
                    const err = asError(e, 'token_failed');
                    if (err.code === 'unauthorized') {
                        finish({ helloed: false, code: 'unauthorized', reason: err.message, terminal: err });
                    }
                    else {
                        this.events.emit('error', err);
                        finish({ helloed: false, code: 'token_failed', reason: err.message });
                    }
                    return;
                }
                if (this.epoch !== epoch || settled)
                    return;
                await this.loadTransport();
                if (this.epoch !== epoch || settled)
                    return;
                let assignment;
                if (this.trialAssignment) {
                    assignment = this.trialAssignment;
                    this.trialAssignment = null;
                }
                else {
                    try {
                        assignment = await restCall(this.fetchFn, this.url('/api/v1/socket-server'), { timeoutMs: 10_000 });
                    }
                    catch (e) {
                        const err = asError(e, 'registry_failed');
                        finish({ helloed: false, code: 'registry_failed', reason: `${err.code}: ${err.message}` });
                        return;
                    }
                }
                if (this.epoch !== epoch || settled)
                    return;
                this.lastAssignment = assignment;
                if (!this.WS && this._transport === 'websocket' && this.opts.transport === 'auto') {
                    this.switchTransport('sse', 'no WebSocket in this runtime', false);
                }
                if (!this.WS && this._transport === 'websocket') {
                    const err = new SwitchboardError('unsupported', 'no WebSocket: pass options.WebSocket (Node 20: --experimental-websocket or the ws package)');
                    finish({ helloed: false, code: 'unsupported', reason: err.message, terminal: err });
                    return;
                }
                let ws;
                try {
                    ws =
                        this._transport === 'sse'
                            ? new SseSocket({
                                url: sseUrlOf(this.resolveSocketUrl(assignment.url).toString()),
                                token: () => this.token ?? token,
                                fetch: this.fetchFn,
                            })
                            : new this.WS(this.socketUrl(assignment.url, token));
                }
                catch (e) {
                    finish({ helloed: false, code: 'upgrade_failed', reason: String(e), upgradeFailed: true });
                    return;
                }
                this.ws = ws;
                this.helloed = false;
                const helloTimer = setTimeout(() => {
                    finish({ helloed: false, code: 'connect_timeout', reason: `no hello within ${this.opts.connectTimeoutMs} ms`, upgradeFailed: true });
                }, this.opts.connectTimeoutMs);
                ws.onmessage = (ev) => {
                    if (this.ws !== ws)
                        return;
                    if (typeof ev.data !== 'string')
                        return;
                    let frame;
                    try {
                        frame = JSON.parse(ev.data);
                    }
                    catch {
                        return;
                    }
                    if (frame.type === 'hello')
                        clearTimeout(helloTimer);
                    this.onFrame(frame);
                };
                let errorTimer;
                ws.onerror = () => {
                    // Browsers follow an error with a close; Node 20's WebSocket does not after a refused
                    // upgrade (a 401 answer): without a close within a second, it is one.
                    clearTimeout(errorTimer);
                    errorTimer = setTimeout(() => {
                        if (this.ws === ws)
                            ws.onclose?.({ code: CLOSE.abnormal, reason: 'socket error', wasClean: false });
                    }, 1_000);
                };
                ws.onclose = (ev) => {
                    clearTimeout(helloTimer);
                    clearTimeout(errorTimer);
                    if (this.ws !== ws)
                        return;
                    const code = ev.code;
                    if (!this.helloed) {
                        finish({ helloed: false, code: 'upgrade_failed', reason: `socket closed before hello (${code})`, closeCode: code, upgradeFailed: true });
                    }
                    else if (code === CLOSE.restart) {
                        finish({ helloed: true, code: 'server_restart', reason: ev.reason || 'the server is restarting', closeCode: code });
                    }
                    else if (code === CLOSE_TOKEN_EXPIRED) {
                        finish({ helloed: true, code: 'token_expired', reason: ev.reason || 'the token expired', closeCode: code, refreshToken: true, immediate: true });
                    }
                    else if (code === CLOSE_SESSIONS_ENDED) {
                        // Every token issued until now is refused for good: only a new one from getToken()
                        // helps. Answering the same token again is terminal (refreshToken refuses it).
                        this.refusedToken = this.token;
                        finish({ helloed: true, code: 'sessions_ended', reason: ev.reason || "the user's sessions were ended", closeCode: code, refreshToken: true, immediate: true });
                    }
                    else {
                        finish({ helloed: true, code: 'socket_closed', reason: ev.reason || `socket closed (${code})`, closeCode: code });
                    }
                };
            })();
        });
    }
    onHello(frame) {
        this.helloed = true;
        if (this.transportTrial) {
            this.transportTrial = false;
            void this.rememberTransport();
        }
        this._serverId = frame.server_id;
        if (!this._userId)
            this._userId = frame.user_id;
        const reconnect = this.everConnected;
        this.everConnected = true;
        this.refreshedAfterRefusal = false;
        this.refusedToken = undefined;
        this.setState('connected', 'hello', `connected to ${frame.server_id}`);
        this.connectDeferred?.resolve();
        this.events.emit('hello', frame);
        this.startPing();
        if (this.timers.token === undefined)
            this.scheduleTokenRefresh();
        this.outboxStore?.resetTransmissions();
        this.resendDue();
        this.armResend();
        this.flushReceipts(true);
        if (this.opts.resync) {
            void this.resync();
            if (reconnect) {
                // Messages sent while we were away can reach the history store a moment after we ask.
                clearTimeout(this.timers.followUp);
                this.timers.followUp = setTimeout(() => {
                    if (this.isLive())
                        void this.resync();
                }, 3_000);
            }
        }
    }
    onConnectionLost() {
        this.lastTyping.clear();
        this.refreshPending = null;
    }
    isLive() {
        return !!this.ws && this.helloed && this.ws.readyState === WS_OPEN;
    }
    write(frame) {
        if (!this.isLive())
            return false;
        try {
            this.ws.send(JSON.stringify(frame));
            return true;
        }
        catch {
            return false;
        }
    }
    url(path) {
        return `${this.opts.baseUrl}${path}`;
    }
    socketUrl(url, token) {
        const u = this.resolveSocketUrl(url);
        u.searchParams.set('token', token);
        return u.toString();
    }
    /** The registry's socket URL, absolute. */
    resolveSocketUrl(url) {
        const base = this.opts.baseUrl || globalThis.location?.href;
        const u = base ? new URL(url, base) : new URL(url);
        // A server advertised on a wildcard address is reached through the entry point's host.
        if ((u.hostname === '0.0.0.0' || u.hostname === '[::]') && base)
            u.hostname = new URL(base).hostname;
        return u;
    }
    // ------------------------------------------------------------------ transport
    switchTransport(to, reason, trial) {
        if (this._transport === to)
            return;
        this._transport = to;
        this.events.emit('transport', { transport: to, reason, trial });
    }
    /** Where the transport that worked for this origin is remembered. */
    transportKey() {
        const base = this.opts.baseUrl || globalThis.location?.href || '';
        let origin = base;
        try {
            origin = new URL(base).origin;
        }
        catch {
            /* a relative or empty base: keyed as given */
        }
        return `${this.opts.storagePrefix}:transport:${origin}`;
    }
    /** Once: the remembered transport of this origin (`auto`), when it is less than a day old. */
    async loadTransport() {
        if (this.transportLoaded || this.opts.transport !== 'auto')
            return;
        this.transportLoaded = true;
        const saved = await readJson(this.storage, this.transportKey(), null).catch(() => null);
        if (saved?.transport === 'sse' && typeof saved.at === 'number' && Date.now() - saved.at < TRANSPORT_MEMORY_MS) {
            this.switchTransport('sse', 'remembered for this origin', false);
        }
    }
    async rememberTransport() {
        await writeJson(this.storage, this.transportKey(), { transport: this._transport, at: Date.now() }).catch(() => undefined);
    }
    // ------------------------------------------------------------------ token
    /** The token to use now: a fresh one when there is none, it is stale or about to expire. */
    async currentToken() {
        const now = Date.now();
        const at = this.token ? refreshAt(this.tokenInfo, TOKEN_MARGIN) : undefined;
        const timeFresh = !isExpired(this.tokenInfo, now) && (at === undefined || now < at);
        // A token that looked expired when getToken() answered it (a wrong clock, here or at the
        // issuer) is tried anyway for a minute: the server decides, and a refusal refreshes it.
        if (this.token && !this.tokenStale && (timeFresh || now < this.tokenTrustedUntil)) {
            return this.token;
        }
        return this.refreshToken();
    }
    refreshToken() {
        if (this.tokenInflight)
            return this.tokenInflight;
        const p = (async () => {
            let token;
            try {
                token = await this.opts.getToken();
            }
            catch (e) {
                throw asError(e, 'token_failed');
            }
            if (typeof token !== 'string' || !token)
                throw new SwitchboardError('token_failed', 'getToken() answered no token');
            if (token === this.refusedToken) {
                throw new SwitchboardError('unauthorized', 'getToken() answered the token the server refused');
            }
            const info = decodeToken(token);
            if (this._userId && info.sub && info.sub !== this._userId) {
                throw new SwitchboardError('unauthorized', `getToken() answered a token for ${info.sub}, this client is ${this._userId}`);
            }
            this.token = token;
            this.tokenInfo = info;
            const due = refreshAt(info, TOKEN_MARGIN);
            this.tokenTrustedUntil = due !== undefined && due <= Date.now() ? Date.now() + 60_000 : 0;
            this.tokenStale = false;
            if (!this._userId && info.sub)
                this._userId = info.sub;
            this.scheduleTokenRefresh();
            this.events.emit('token', { expiresAt: info.exp !== undefined ? info.exp * 1000 : undefined });
            return token;
        })();
        this.tokenInflight = p;
        const clear = () => {
            if (this.tokenInflight === p)
                this.tokenInflight = null;
        };
        p.then(clear, clear);
        return p;
    }
    /**
     * Shortly before `exp`: a new token, then a graceful reconnect with it (the server checks
     * tokens at the upgrade; with the in-band refresh of issue 24 the socket would stay).
     */
    scheduleTokenRefresh() {
        clearTimeout(this.timers.token);
        this.timers.token = undefined;
        const due = refreshAt(this.tokenInfo, TOKEN_MARGIN);
        if (due === undefined)
            return;
        // Never sooner than the minute a clock-suspect token is trusted for (no reconnect loop).
        const at = Math.max(due, this.tokenTrustedUntil);
        // setTimeout's limit is 2^31-1 ms; a long-lived token is simply re-checked later.
        const delay = Math.min(Math.max(0, at - Date.now()), 2 ** 31 - 1);
        this.timers.token = setTimeout(() => {
            this.timers.token = undefined;
            if (this._state !== 'connected')
                return; // the next attempt refreshes it
            if (Date.now() < at) {
                this.scheduleTokenRefresh();
                return;
            }
            void this.refreshInBand();
        }, delay);
    }
    /**
     * A new token for the live connection: sent as `refresh` (docs/protocol.md "Token
     * lifetime"), so the socket stays; a server that does not know the frame gets a graceful
     * reconnect with the new token instead.
     */
    async refreshInBand() {
        if (this.refreshPending)
            return;
        this.tokenStale = true;
        let token;
        try {
            token = await this.currentToken();
        }
        catch (e) {
            this.events.emit('error', asError(e, 'token_failed'));
            return;
        }
        if (!this.isLive())
            return; // the next attempt connects with it
        if (this.inBandUnsupported) {
            this.endAttempt?.({ helloed: true, code: 'token_refresh', reason: 'the token is about to expire', immediate: true });
            return;
        }
        if (this.write({ type: 'refresh', token }))
            this.refreshPending = token;
    }
    /** An `error` frame without `client_msg_id` while a `refresh` waits is taken as its answer. */
    onRefreshError(err) {
        const token = this.refreshPending;
        this.refreshPending = null;
        if (err.code === 'bad_request') {
            this.inBandUnsupported = true;
            this.endAttempt?.({ helloed: true, code: 'token_refresh', reason: 'the server has no in-band refresh', immediate: true });
        }
        else if (err.code === 'unavailable' || err.code === 'rate_limited') {
            setTimeout(() => void this.refreshInBand(), 2_000);
        }
        else {
            // unauthorized / forbidden: this token will not do. The socket lives on its old token
            // until exp (4401); the next attempt asks getToken() again, and the same answer is terminal.
            this.refusedToken = token ?? undefined;
            this.tokenStale = true;
            this.events.emit('error', err);
        }
    }
    // ------------------------------------------------------------------ frames
    onFrame(frame) {
        switch (frame.type) {
            case 'hello':
                this.onHello(frame);
                break;
            case 'pong':
                this.awaitingPong = false;
                clearTimeout(this.timers.pong);
                this.timers.pong = undefined;
                break;
            case 'sent':
                this.onSent(frame);
                break;
            case 'message': {
                const m = stripType(frame);
                // A live frame names its attachments by id: `{ id }` each, as history's objects.
                const attachments = normalizeAttachments(m.attachments);
                if (attachments)
                    m.attachments = attachments;
                else
                    delete m.attachments;
                this.offer(m);
                break;
            }
            case 'event':
                this.offer(stripType(frame));
                break;
            case 'receipt':
                this.events.emit('receipt', stripType(frame));
                break;
            case 'presence':
                this.events.emit('presence', stripType(frame));
                break;
            case 'typing':
                this.events.emit('typing', stripType(frame));
                break;
            case 'error':
                void this.onServerError(frame);
                break;
            case 'token_expiring':
                // The server's notice arrives on time even where our own timer runs late (background tabs).
                void this.refreshInBand();
                break;
            case 'token_refreshed':
                this.refreshPending = null;
                break;
            default:
                break;
        }
    }
    onSent(ack) {
        const entry = this.outboxStore?.get(ack.client_msg_id);
        // Not in the outbox: a repeat answer, or already confirmed by a history row (which delivered it).
        if (!entry)
            return;
        // Offered before the outbox write so a following `message` of someone else finds no false gap;
        // offer() sees our client_msg_id and completes the entry.
        if (entry.action) {
            const { kind, message_id, emoji } = entry.action;
            this.offer({
                conversation_id: ack.conversation_id,
                event_id: ack.message_id,
                seq: ack.seq,
                sender_id: this._userId ?? '',
                kind,
                message_id,
                ...(kind === 'edit' ? { body: entry.body } : {}),
                ...(kind === 'reaction' && emoji ? { emoji } : {}),
                created_at: ack.created_at,
                client_msg_id: ack.client_msg_id,
            });
            void this.complete(ack.client_msg_id, ack);
            return;
        }
        this.offer({
            ...(entry.reply_to !== undefined ? { reply_to: entry.reply_to } : {}),
            ...(entry.attachments?.length ? { attachments: entry.attachments.map((id) => ({ id })) } : {}),
            conversation_id: ack.conversation_id,
            message_id: ack.message_id,
            seq: ack.seq,
            sender_id: this._userId ?? '',
            body: entry.body,
            created_at: ack.created_at,
            client_msg_id: ack.client_msg_id,
        });
    }
    /** Confirms an outbox entry once; answers it, or undefined when it was not (or no longer) there. */
    async complete(clientMsgId, ack) {
        const outbox = this.outboxStore;
        if (!outbox?.get(clientMsgId))
            return undefined;
        const entry = await outbox.remove(clientMsgId);
        if (!entry)
            return undefined;
        const clean = {
            client_msg_id: ack.client_msg_id,
            conversation_id: ack.conversation_id,
            message_id: ack.message_id,
            seq: ack.seq,
            created_at: ack.created_at,
        };
        this.sendWaiters.get(clientMsgId)?.resolve(clean);
        this.sendWaiters.delete(clientMsgId);
        this.events.emit('sent', { entry, ack: clean });
        this.emitOutbox();
        if (outbox.pending().length === 0) {
            clearInterval(this.timers.resend);
            this.timers.resend = undefined;
        }
        return entry;
    }
    async onServerError(frame) {
        const err = new SwitchboardError(frame.code, frame.message);
        const id = frame.client_msg_id;
        const outbox = this.outboxStore;
        if (!id && this.refreshPending) {
            this.onRefreshError(err);
            return;
        }
        if (!id || !outbox?.get(id)) {
            this.events.emit('error', err);
            return;
        }
        if (RETRYABLE_CODES.has(frame.code)) {
            outbox.deferUntil(id, Date.now() + 1_000 + this.opts.random() * 1_000);
            return;
        }
        const entry = await outbox.fail(id, { code: frame.code, message: frame.message });
        if (!entry)
            return;
        this.sendWaiters.get(id)?.reject(err);
        this.sendWaiters.delete(id);
        this.events.emit('sendFailed', { entry: { ...entry }, error: err });
        this.emitOutbox();
    }
    // ------------------------------------------------------------------ outbox
    emitOutbox() {
        if (this.events.count('outbox') > 0)
            this.events.emit('outbox', this.outbox());
    }
    transmit(entry) {
        if (entry.status !== 'pending' || !this.isLive())
            return;
        if (this.write(frameOf(entry))) {
            this.outboxStore.markTransmitted(entry.client_msg_id, Date.now(), this.opts.sendTimeoutMs);
        }
    }
    /** Sends what is due, within the per-tick budget that keeps under the server's frame rate. */
    resendDue() {
        const outbox = this.outboxStore;
        if (!outbox || !this.isLive())
            return;
        const budget = Math.max(1, Math.floor(this.opts.resendPerSecond / 4));
        for (const e of outbox.due(Date.now()).slice(0, budget))
            this.transmit(e);
    }
    armResend() {
        if (this.timers.resend !== undefined || !this.isLive())
            return;
        if (!this.outboxStore || this.outboxStore.pending().length === 0)
            return;
        this.timers.resend = setInterval(() => {
            if (!this.outboxStore || this.outboxStore.pending().length === 0) {
                clearInterval(this.timers.resend);
                this.timers.resend = undefined;
                return;
            }
            this.resendDue();
        }, 250);
    }
    // ------------------------------------------------------------------ ordering
    offer(msg) {
        if (!msg || typeof msg.conversation_id !== 'string' || typeof msg.seq !== 'number')
            return;
        // A copy of our own message (history row, or a `message` frame echoing it) confirms its send even if `sent` was lost.
        if (!('event_id' in msg) && msg.client_msg_id && (!this._userId || msg.sender_id === this._userId) && this.outboxStore?.get(msg.client_msg_id)) {
            void this.complete(msg.client_msg_id, {
                client_msg_id: msg.client_msg_id,
                conversation_id: msg.conversation_id,
                message_id: msg.message_id,
                seq: msg.seq,
                created_at: msg.created_at,
            });
        }
        const conv = msg.conversation_id;
        if (!this.known.has(conv)) {
            this.known.add(conv);
            // A conversation never seen: start near its end when the app asked for a bounded first sync.
            if (Number.isFinite(this.opts.firstSyncLimit) && this.sequencer.cursor(conv) === 0) {
                this.sequencer.setCursor(conv, Math.max(0, msg.seq - 1 - this.opts.firstSyncLimit));
            }
        }
        const res = this.sequencer.offer(msg);
        for (const m of res.deliver) {
            if ('event_id' in m)
                this.events.emit('event', m);
            else
                this.events.emit('message', m);
        }
        if (res.deliver.length > 0) {
            this.scheduleCursorWrite();
            if (this.opts.autoDelivered)
                this.scheduleReceipts();
        }
        if (res.gap)
            void this.fill(conv, this.sequencer.highestKnown(conv));
    }
    /**
     * Fetches history after the cursor until it reaches `target`. One fetch per conversation at
     * a time; history trails live delivery, so a short answer is asked again a little later.
     */
    async fill(conv, target) {
        const running = this.fills.get(conv);
        if (running) {
            running.again = true;
            running.target = Math.max(running.target, target);
            return;
        }
        const state = { again: false, target };
        this.fills.set(conv, state);
        const epoch = this.epoch;
        try {
            let shortAnswers = 0;
            for (;;) {
                if (this._state === 'closed' || this.epoch !== epoch)
                    return;
                const after = this.sequencer.cursor(conv);
                const goal = Math.max(state.target, this.sequencer.highestKnown(conv));
                if (after >= goal && !this.sequencer.hasGap(conv)) {
                    if (!state.again)
                        return;
                    state.again = false;
                    continue;
                }
                state.again = false;
                // Events take seqs too: the cursor passes them only if the page carries them.
                let rows;
                try {
                    const page = await this.historyWithEvents(conv, { afterSeq: after, limit: this.opts.historyPageSize });
                    rows = [...page.messages, ...page.events].sort((a, b) => a.seq - b.seq);
                }
                catch (e) {
                    const err = asError(e, 'network');
                    if (err.code === 'not_a_member' || err.code === 'unauthorized' || err.code === 'bad_request') {
                        this.events.emit('error', err);
                        return;
                    }
                    rows = [];
                }
                for (const row of rows)
                    this.offer({ ...row, conversation_id: conv });
                if (this.sequencer.cursor(conv) > after) {
                    shortAnswers = 0;
                    continue;
                }
                // Nothing new yet: the store has not caught up with live delivery. Back off a little.
                if (++shortAnswers > 8) {
                    this.events.emit('error', new SwitchboardError('unavailable', `history of ${conv} stays behind seq ${goal}`));
                    return;
                }
                await new Promise((r) => setTimeout(r, Math.min(4_000, 150 * 2 ** shortAnswers)));
            }
        }
        finally {
            this.fills.delete(conv);
        }
    }
    /**
     * After `hello`: every conversation whose `last_seq` is ahead of the cursor is filled; one
     * still behind the cursor it had RESET_CONFIRM_MS earlier was reset.
     */
    async resync() {
        let convs;
        try {
            convs = await this.allConversations();
        }
        catch (e) {
            this.events.emit('error', asError(e, 'network'));
            return;
        }
        for (const c of convs) {
            const last = c.last_seq ?? 0;
            const cursor = this.sequencer.cursor(c.id);
            if (last >= cursor)
                this.storeBehind.delete(c.id);
            else if (this.storeWasReset(c.id, last, cursor)) {
                this.events.emit('reset', { conversation_id: c.id, server_last_seq: last, local_cursor: cursor });
                this.sequencer.reset(c.id);
                this.receipts.delete(c.id);
                this.scheduleCursorWrite();
            }
            if (!this.known.has(c.id)) {
                this.known.add(c.id);
                if (Number.isFinite(this.opts.firstSyncLimit)) {
                    this.sequencer.setCursor(c.id, Math.max(0, last - this.opts.firstSyncLimit));
                    this.scheduleCursorWrite();
                }
            }
            if (last > this.sequencer.cursor(c.id))
                void this.fill(c.id, last);
        }
    }
    /**
     * A stored `last_seq` below the cursor: a reset only when the store has still not reached the
     * cursor of the first sighting RESET_CONFIRM_MS later (a lagging store has by then). The first
     * sighting schedules that second look.
     */
    storeWasReset(conv, last, cursor) {
        const seen = this.storeBehind.get(conv);
        const waited = seen ? Date.now() - seen.at : 0;
        if (!seen)
            this.storeBehind.set(conv, { at: Date.now(), cursor });
        if (!seen || waited < RESET_CONFIRM_MS) {
            if (this.timers.resetCheck === undefined) {
                this.timers.resetCheck = setTimeout(() => {
                    this.timers.resetCheck = undefined;
                    if (this.isLive())
                        void this.resync();
                }, RESET_CONFIRM_MS - waited);
            }
            return false;
        }
        this.storeBehind.delete(conv);
        return last < seen.cursor;
    }
    // ------------------------------------------------------------------ receipts
    receiptState(conv) {
        let r = this.receipts.get(conv);
        if (!r) {
            r = { d: 0, r: 0, readWanted: 0 };
            this.receipts.set(conv, r);
        }
        return r;
    }
    scheduleReceipts() {
        if (this.timers.receipts !== undefined)
            return;
        this.timers.receipts = setTimeout(() => {
            this.timers.receipts = undefined;
            this.flushReceipts();
        }, 200);
    }
    /** Sends `delivered` (cursor advanced) and `read` (markRead) receipts not yet sent. */
    flushReceipts(all = false) {
        if (!this.isLive())
            return;
        const convs = new Set(this.receipts.keys());
        if (this.opts.autoDelivered || all)
            for (const id of Object.keys(this.sequencer.cursors()))
                convs.add(id);
        let changed = false;
        for (const conv of convs) {
            const r = this.receiptState(conv);
            const cursor = this.sequencer.cursor(conv);
            if (r.readWanted > r.r) {
                // `read` raises `delivered` too; never past what we have (the server refuses that).
                const seq = r.readWanted;
                if (this.write({ type: 'read', conversation_id: conv, seq })) {
                    r.r = seq;
                    r.d = Math.max(r.d, seq);
                    changed = true;
                }
            }
            if (this.opts.autoDelivered && cursor > r.d) {
                if (this.write({ type: 'delivered', conversation_id: conv, seq: cursor })) {
                    r.d = cursor;
                    changed = true;
                }
            }
        }
        if (changed)
            this.scheduleCursorWrite();
    }
    // ------------------------------------------------------------------ liveness
    startPing() {
        clearInterval(this.timers.ping);
        this.awaitingPong = false;
        this.timers.ping = setInterval(() => this.sendPing(), this.pingInterval);
    }
    /**
     * Sends a ping unless one is outstanding. The socket is dead only when *this* ping is still
     * unanswered when its timer fires: a timer that fires late (a background tab runs timers
     * about once a minute) finds the pong already in and changes nothing.
     */
    sendPing() {
        if (!this.isLive() || this.awaitingPong)
            return;
        if (!this.write({ type: 'ping' }))
            return;
        this.awaitingPong = true;
        const mine = ++this.pingCounter;
        clearTimeout(this.timers.pong);
        this.timers.pong = setTimeout(() => {
            if (this.awaitingPong && this.pingCounter === mine) {
                this.endAttempt?.({ helloed: true, code: 'ping_timeout', reason: `no pong within ${this.pingTimeout} ms`, closeCode: 4000 });
            }
        }, this.pingTimeout);
    }
    attachBrowserEvents() {
        const g = globalThis;
        if (typeof g.addEventListener !== 'function' || !g.document?.addEventListener)
            return;
        const onVisible = () => {
            if (g.document?.visibilityState === 'visible')
                this.nudge();
        };
        const onOnline = () => this.nudge();
        g.document.addEventListener('visibilitychange', onVisible);
        g.addEventListener('online', onOnline);
        this.detachBrowser = () => {
            g.document?.removeEventListener?.('visibilitychange', onVisible);
            g.removeEventListener?.('online', onOnline);
        };
    }
    /** The page came back or the network did: check a live socket now, or stop waiting out a backoff. */
    nudge() {
        if (this.isLive())
            this.sendPing();
        else if (this._state === 'connecting')
            this.wake?.();
    }
    // ------------------------------------------------------------------ persistence
    ready() {
        if (!this.readyPromise) {
            this.readyPromise = (async () => {
                await this.currentToken();
                const user = this._userId;
                if (!user)
                    throw new SwitchboardError('bad_request', 'the token has no sub claim');
                const prefix = `${this.opts.storagePrefix}:${user}`;
                const outbox = new Outbox(this.storage, `${prefix}:outbox`);
                await outbox.load();
                this.outboxStore = outbox;
                const cursors = await readJson(this.storage, `${prefix}:cursors`, {});
                for (const [conv, rec] of Object.entries(cursors ?? {})) {
                    if (!rec || typeof rec.c !== 'number')
                        continue;
                    this.sequencer.setCursor(conv, rec.c);
                    this.known.add(conv);
                    this.receipts.set(conv, { d: rec.d ?? 0, r: rec.r ?? 0, readWanted: rec.r ?? 0 });
                }
                // Promises do not survive a reload; entries do, and their confirmations arrive as `sent` events.
                if (outbox.size > 0)
                    this.emitOutbox();
            })();
            this.readyPromise.catch(() => {
                this.readyPromise = null;
            });
        }
        return this.readyPromise;
    }
    scheduleCursorWrite() {
        if (this.timers.cursors !== undefined)
            return;
        this.timers.cursors = setTimeout(() => {
            this.timers.cursors = undefined;
            void this.flushCursors();
        }, 250);
    }
    async flushCursors() {
        clearTimeout(this.timers.cursors);
        this.timers.cursors = undefined;
        if (!this._userId || !this.outboxStore)
            return;
        const out = {};
        for (const [conv, c] of Object.entries(this.sequencer.cursors())) {
            const r = this.receipts.get(conv);
            out[conv] = { c, d: r?.d ?? 0, r: r?.r ?? 0 };
        }
        try {
            await writeJson(this.storage, `${this.opts.storagePrefix}:${this._userId}:cursors`, out);
        }
        catch (e) {
            this.events.emit('error', asError(e, 'storage'));
        }
    }
}
function stripType(frame) {
    const { type: _type, ...rest } = frame;
    return rest;
}
function asError(e, code) {
    if (e instanceof SwitchboardError)
        return e;
    return new SwitchboardError(code, e instanceof Error ? e.message : String(e));
}
/** The frame that sends an outbox entry: a `send`, or an `edit`, `delete` or `react`. */
function frameOf(entry) {
    const base = { conversation_id: entry.conversation_id, client_msg_id: entry.client_msg_id };
    const action = entry.action;
    if (!action) {
        return {
            type: 'send',
            ...base,
            body: entry.body,
            ...(entry.attachments?.length ? { attachments: entry.attachments } : {}),
            ...(entry.reply_to !== undefined ? { reply_to: entry.reply_to } : {}),
        };
    }
    switch (action.kind) {
        case 'edit':
            return { type: 'edit', ...base, message_id: action.message_id, body: entry.body };
        case 'delete':
            return { type: 'delete', ...base, message_id: action.message_id };
        default:
            return { type: 'react', ...base, message_id: action.message_id, emoji: action.emoji ?? null };
    }
}
