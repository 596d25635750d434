// Generated from clients/js/src/protocol.ts by clients/js/vendor-demo.sh: do not edit.
/** The wire types of docs/protocol.md, as the SDK reads and writes them. */
/** Error codes a `send` may be answered with that a resend can cure. */
export const RETRYABLE_CODES = new Set(['unavailable', 'rate_limited', 'internal']);
/** WebSocket close codes the SDK treats specially. */
export const CLOSE = {
    normal: 1000,
    goingAway: 1001,
    abnormal: 1006,
    tooLarge: 1009,
    restart: 1012,
    tryAgainLater: 1013,
};
