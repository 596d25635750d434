// Generated from clients/js/src/index.ts by clients/js/vendor-demo.sh: do not edit.
/**
 * `@switchboard/client`: the Switchboard client SDK (docs/protocol.md over WebSocket, or its HTTP fallback).
 *
 * Zero runtime dependencies; runs in browsers and Node 20+ (give it a `WebSocket`).
 */
export { SwitchboardClient, CLOSE_SESSIONS_ENDED, CLOSE_TOKEN_EXPIRED } from './client.js';
export { SwitchboardError } from './errors.js';
export { applyEvent, isImage, normalizeAttachments, setReaction } from './rich.js';
export { SseSocket, sseUrlOf } from './sse.js';
export { Outbox } from './outbox.js';
export { Sequencer } from './sequencer.js';
export { MemoryStorage, defaultStorage } from './storage.js';
export { DEFAULT_BACKOFF, backoffCeiling, fullJitterDelay, restartDelay } from './backoff.js';
export { decodeToken, refreshAt } from './token.js';
export { uuidv4, isUuidV4 } from './uuid.js';
