/**
 * `@switchboard/client`: the Switchboard client SDK (docs/protocol.md over WebSocket, or its HTTP fallback).
 *
 * Zero runtime dependencies; runs in browsers and Node 20+ (give it a `WebSocket`).
 */

export { SwitchboardClient, CLOSE_SESSIONS_ENDED, CLOSE_TOKEN_EXPIRED } from './client.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  RetryScheduled,
  StateChange,
  StoreReset,
  Transport,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { SwitchboardError } from './errors.js';
export { applyEvent, isImage, normalizeAttachments, setReaction } from './rich.js';
export type { UploadBody, UploadProgress, XhrConstructor, XhrLike } from './upload.js';
export { SseSocket, sseUrlOf } from './sse.js';
export type { SseSocketOptions } from './sse.js';
export type { OutboxAction, OutboxEntry, OutboxStatus } from './outbox.js';
export { Outbox } from './outbox.js';
export { Sequencer } from './sequencer.js';
export type { Numbered, OfferResult } from './sequencer.js';
export { MemoryStorage, defaultStorage } from './storage.js';
export type { KeyValueStorage } from './storage.js';
export { DEFAULT_BACKOFF, backoffCeiling, fullJitterDelay, restartDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { decodeToken, refreshAt } from './token.js';
export type { TokenInfo } from './token.js';
export { uuidv4, isUuidV4 } from './uuid.js';
export type { Unsubscribe } from './emitter.js';
export type {
  Attachment,
  Conversation,
  Hello,
  Message,
  MessageEvent,
  Presence,
  Reaction,
  Receipt,
  SentAck,
  ServerError,
  Typing,
  UploadTicket,
} from './protocol.js';
