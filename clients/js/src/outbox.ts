/**
 * The outbox: every message the app sent that the server has not yet confirmed.
 *
 * An entry is written to storage before its first transmission, so a reload, a crash or a
 * dead socket loses nothing; it leaves only when a `sent` (or a `message`/history row with the
 * same `client_msg_id`) confirms it, or when the app cancels it. The server deduplicates by
 * `client_msg_id` per conversation, so resending is always safe.
 */

import type { KeyValueStorage } from './storage.js';
import { readJson, writeJson } from './storage.js';
import { uuidv4 } from './uuid.js';

export type OutboxStatus = 'pending' | 'failed';

export interface OutboxEntry {
  client_msg_id: string;
  conversation_id: string;
  body: string;
  /** When the app called `send()`, ms since the epoch. */
  queued_at: number;
  /** Transmissions so far (on this page; not persisted as meaningful after a reload). */
  attempts: number;
  /** `pending`: will be (re)sent; `failed`: the server refused it for good, see `error`. */
  status: OutboxStatus;
  error?: { code: string; message: string };
  /** A reply: the `message_id` it answers. */
  reply_to?: string;
  /** Attachment ids (uploaded already) the message carries. */
  attachments?: string[];
  /** Not a message: an edit (`body` is the new text), a delete or a reaction of `message_id`. */
  action?: OutboxAction;
}

/** An edit, delete or reaction queued like a message (docs/protocol.md, "Message events"). */
export interface OutboxAction {
  kind: 'edit' | 'delete' | 'reaction';
  message_id: string;
  /** `reaction`: the emoji; null removes the sender's reaction. */
  emoji?: string | null;
}

export class Outbox {
  private readonly entries = new Map<string, OutboxEntry>();
  /** When each entry may next be written to the socket (not persisted: a new page sends at once). */
  private readonly notBefore = new Map<string, number>();
  /** Serializes writes so an older snapshot never lands after a newer one. */
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly storage: KeyValueStorage,
    private readonly key: string,
  ) {}

  /** Loads what a previous page left (call once, before anything else). */
  async load(): Promise<void> {
    const saved = await readJson<OutboxEntry[]>(this.storage, this.key, []);
    for (const e of Array.isArray(saved) ? saved : []) {
      if (e && typeof e.client_msg_id === 'string' && typeof e.conversation_id === 'string' && typeof e.body === 'string') {
        this.entries.set(e.client_msg_id, { ...e, attempts: 0, status: e.status === 'failed' ? 'failed' : 'pending' });
      }
    }
  }

  /** Adds an entry and waits until it is in storage. */
  async add(
    conversationId: string,
    body: string,
    now: number,
    clientMsgId: string = uuidv4(),
    extra: Pick<OutboxEntry, 'reply_to' | 'action' | 'attachments'> = {},
  ): Promise<OutboxEntry> {
    const entry: OutboxEntry = {
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

  get(clientMsgId: string): OutboxEntry | undefined {
    return this.entries.get(clientMsgId);
  }

  /** Every entry, oldest first (a copy). */
  list(): OutboxEntry[] {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }

  get size(): number {
    return this.entries.size;
  }

  /** Pending entries, oldest first: what a (re)send goes through. */
  pending(): OutboxEntry[] {
    return [...this.entries.values()].filter((e) => e.status === 'pending');
  }

  /** Pending entries due for a (re)send at `now`, oldest first (never written counts as due). */
  due(now: number): OutboxEntry[] {
    return this.pending().filter((e) => {
      const at = this.notBefore.get(e.client_msg_id);
      return at === undefined || now >= at;
    });
  }

  /** Records a transmission; the entry is due again `timeoutMs` later unless confirmed. */
  markTransmitted(clientMsgId: string, now: number, timeoutMs: number): void {
    const e = this.entries.get(clientMsgId);
    if (!e) return;
    e.attempts += 1;
    this.notBefore.set(clientMsgId, now + timeoutMs);
  }

  /** Holds an entry back until `at` (a retryable refusal: `unavailable`, `rate_limited`). */
  deferUntil(clientMsgId: string, at: number): void {
    if (this.entries.has(clientMsgId)) this.notBefore.set(clientMsgId, at);
  }

  /** Forgets every schedule (a new connection: everything is due at once). */
  resetTransmissions(): void {
    this.notBefore.clear();
  }

  /** Removes a confirmed (or cancelled) entry; answers it, or undefined if it was not there. */
  async remove(clientMsgId: string): Promise<OutboxEntry | undefined> {
    const e = this.entries.get(clientMsgId);
    if (!e) return undefined;
    this.entries.delete(clientMsgId);
    this.notBefore.delete(clientMsgId);
    await this.persist();
    return e;
  }

  async fail(clientMsgId: string, error: { code: string; message: string }): Promise<OutboxEntry | undefined> {
    const e = this.entries.get(clientMsgId);
    if (!e) return undefined;
    e.status = 'failed';
    e.error = error;
    await this.persist();
    return e;
  }

  /** A failed entry becomes pending again (same `client_msg_id`). */
  async retry(clientMsgId: string): Promise<OutboxEntry | undefined> {
    const e = this.entries.get(clientMsgId);
    if (!e) return undefined;
    e.status = 'pending';
    delete e.error;
    this.notBefore.delete(clientMsgId);
    await this.persist();
    return e;
  }

  private persist(): Promise<void> {
    const snapshot = [...this.entries.values()];
    const next = this.writing.then(() => writeJson(this.storage, this.key, snapshot));
    // A failed write (quota) is reported to the caller of this write only.
    this.writing = next.catch(() => undefined);
    return next;
  }
}
