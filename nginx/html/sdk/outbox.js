// Generated from clients/js/src/outbox.ts by clients/js/vendor-demo.sh: do not edit.
/**
 * The outbox: every message the app sent that the server has not yet confirmed.
 *
 * An entry is written to storage before its first transmission, so a reload, a crash or a
 * dead socket loses nothing; it leaves only when a `sent` (or a `message`/history row with the
 * same `client_msg_id`) confirms it, or when the app cancels it. The server deduplicates by
 * `client_msg_id` per conversation, so resending is always safe.
 */
import { readJson, writeJson } from './storage.js';
import { uuidv4 } from './uuid.js';
export class Outbox {
    storage;
    key;
    entries = new Map();
    /** When each entry may next be written to the socket (not persisted: a new page sends at once). */
    notBefore = new Map();
    /** Serializes writes so an older snapshot never lands after a newer one. */
    writing = Promise.resolve();
    constructor(storage, key) {
        this.storage = storage;
        this.key = key;
    }
    /** Loads what a previous page left (call once, before anything else). */
    async load() {
        const saved = await readJson(this.storage, this.key, []);
        for (const e of Array.isArray(saved) ? saved : []) {
            if (e && typeof e.client_msg_id === 'string' && typeof e.conversation_id === 'string' && typeof e.body === 'string') {
                this.entries.set(e.client_msg_id, { ...e, attempts: 0, status: e.status === 'failed' ? 'failed' : 'pending' });
            }
        }
    }
    /** Adds an entry and waits until it is in storage. */
    async add(conversationId, body, now, clientMsgId = uuidv4(), extra = {}) {
        const entry = {
            client_msg_id: clientMsgId,
            conversation_id: conversationId,
            body,
            queued_at: now,
            attempts: 0,
            status: 'pending',
            ...(extra.reply_to !== undefined ? { reply_to: extra.reply_to } : {}),
            ...(extra.action !== undefined ? { action: extra.action } : {}),
            ...(extra.attachments?.length ? { attachments: [...extra.attachments] } : {}),
        };
        this.entries.set(entry.client_msg_id, entry);
        await this.persist();
        return entry;
    }
    get(clientMsgId) {
        return this.entries.get(clientMsgId);
    }
    /** Every entry, oldest first (a copy). */
    list() {
        return [...this.entries.values()].map((e) => ({ ...e }));
    }
    get size() {
        return this.entries.size;
    }
    /** Pending entries, oldest first: what a (re)send goes through. */
    pending() {
        return [...this.entries.values()].filter((e) => e.status === 'pending');
    }
    /** Pending entries due for a (re)send at `now`, oldest first (never written counts as due). */
    due(now) {
        return this.pending().filter((e) => {
            const at = this.notBefore.get(e.client_msg_id);
            return at === undefined || now >= at;
        });
    }
    /** Records a transmission; the entry is due again `timeoutMs` later unless confirmed. */
    markTransmitted(clientMsgId, now, timeoutMs) {
        const e = this.entries.get(clientMsgId);
        if (!e)
            return;
        e.attempts += 1;
        this.notBefore.set(clientMsgId, now + timeoutMs);
    }
    /** Holds an entry back until `at` (a retryable refusal: `unavailable`, `rate_limited`). */
    deferUntil(clientMsgId, at) {
        if (this.entries.has(clientMsgId))
            this.notBefore.set(clientMsgId, at);
    }
    /** Forgets every schedule (a new connection: everything is due at once). */
    resetTransmissions() {
        this.notBefore.clear();
    }
    /** Removes a confirmed (or cancelled) entry; answers it, or undefined if it was not there. */
    async remove(clientMsgId) {
        const e = this.entries.get(clientMsgId);
        if (!e)
            return undefined;
        this.entries.delete(clientMsgId);
        this.notBefore.delete(clientMsgId);
        await this.persist();
        return e;
    }
    async fail(clientMsgId, error) {
        const e = this.entries.get(clientMsgId);
        if (!e)
            return undefined;
        e.status = 'failed';
        e.error = error;
        await this.persist();
        return e;
    }
    /** A failed entry becomes pending again (same `client_msg_id`). */
    async retry(clientMsgId) {
        const e = this.entries.get(clientMsgId);
        if (!e)
            return undefined;
        e.status = 'pending';
        delete e.error;
        this.notBefore.delete(clientMsgId);
        await this.persist();
        return e;
    }
    persist() {
        const snapshot = [...this.entries.values()];
        const next = this.writing.then(() => writeJson(this.storage, this.key, snapshot));
        // A failed write (quota) is reported to the caller of this write only.
        this.writing = next.catch(() => undefined);
        return next;
    }
}
