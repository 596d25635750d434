/** The wire types of docs/protocol.md, as the SDK reads and writes them. */

/** A stored message: a `message` frame without `type`, or a history row. */
export interface Message {
  conversation_id: string;
  message_id: string;
  seq: number;
  sender_id: string;
  body: string;
  created_at: string;
  /** Present on history rows, and on messages this client sent itself. */
  client_msg_id?: string;
  /** The message it answers (docs/protocol.md, "Message events"). */
  reply_to?: string;
  /** History rows: when it was last edited. */
  edited_at?: string;
  /** History rows: deleted for everyone (a tombstone, `body` empty). */
  deleted?: boolean;
  /** History rows: its reactions, one entry per emoji. */
  reactions?: Reaction[];
  /**
   * Its files (docs/protocol.md, "Attachments"). History rows carry the metadata and a
   * download `url`; a live `message` carries the ids only (`{ id }`): ask
   * `client.attachmentsOf(conversation_id, seq)` for the rest. Absent: none.
   */
  attachments?: Attachment[];
}

/** One emoji's reactions to a message: `me` when the caller's reaction is this one. */
export interface Reaction {
  emoji: string;
  count: number;
  me: boolean;
  users: string[];
}

/**
 * A file of a message. Only `id` is always there; the rest comes from history
 * (`width`/`height` for images; `url` is a pre-signed download URL valid until `url_expires_at`).
 */
export interface Attachment {
  id: string;
  filename?: string;
  content_type?: string;
  size?: number;
  width?: number;
  height?: number;
  url?: string;
  url_expires_at?: string;
}

/** The answer of `POST /api/v1/conversations/{id}/attachments`: where to PUT the bytes. */
export interface UploadTicket {
  attachment_id: string;
  upload_url: string;
  upload_method: string;
  upload_headers: Record<string, string>;
  expires_at: string;
}

/**
 * An edit, delete or reaction of the message `message_id`, numbered in the conversation's
 * sequence like a message (an `event` frame without `type`, or a history `events` row).
 */
export interface MessageEvent {
  conversation_id: string;
  event_id: string;
  seq: number;
  sender_id: string;
  kind: 'edit' | 'delete' | 'reaction';
  message_id: string;
  /** `edit`: the new body. */
  body?: string;
  /** `reaction`: the sender's emoji now; absent: removed. */
  emoji?: string;
  created_at: string;
  /** History rows. */
  client_msg_id?: string;
  /** History rows: false when it changed nothing (its message was deleted before it). */
  applied?: boolean;
}

/** What `send()` resolves to: the server's `sent` answer. */
export interface SentAck {
  client_msg_id: string;
  conversation_id: string;
  message_id: string;
  seq: number;
  created_at: string;
}

export interface Receipt {
  conversation_id: string;
  user_id: string;
  kind: 'delivered' | 'read';
  seq: number;
}

export interface Presence {
  user_id: string;
  status: 'online' | 'offline';
  last_seen: string | null;
}

export interface Typing {
  conversation_id: string;
  user_id: string;
}

export interface ServerError {
  code: string;
  message: string;
  client_msg_id?: string;
}

export interface Hello {
  user_id: string;
  server_id: string;
}

export type ServerFrame =
  | ({ type: 'hello' } & Hello)
  | ({ type: 'sent' } & SentAck)
  | ({ type: 'message' } & Message)
  | ({ type: 'event' } & MessageEvent)
  | ({ type: 'receipt' } & Receipt)
  | ({ type: 'presence' } & Presence)
  | ({ type: 'typing' } & Typing)
  | { type: 'pong' }
  | ({ type: 'error' } & ServerError)
  | { type: string; [k: string]: unknown };

export interface Conversation {
  id: string;
  kind: 'direct' | 'group';
  name: string | null;
  members: string[];
  member_count?: number;
  last_seq?: number;
  unread?: number;
  receipts?: { user_id: string; delivered_seq: number; read_seq: number }[];
  roles?: Record<string, string>;
  invited?: string[];
}

/** Error codes a `send` may be answered with that a resend can cure. */
export const RETRYABLE_CODES: ReadonlySet<string> = new Set(['unavailable', 'rate_limited', 'internal']);

/** WebSocket close codes the SDK treats specially. */
export const CLOSE = {
  normal: 1000,
  goingAway: 1001,
  abnormal: 1006,
  tooLarge: 1009,
  restart: 1012,
  tryAgainLater: 1013,
} as const;
