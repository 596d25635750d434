// Generated from clients/js/src/errors.ts by clients/js/vendor-demo.sh: do not edit.
/** One error type for everything the SDK rejects with, carrying the protocol's stable codes. */
export class SwitchboardError extends Error {
    /**
     * A code of the protocol's table (`unauthorized`, `not_a_member`, `too_large`, ...) or one of
     * the SDK's own: `cancelled` (disconnect, close or an outbox cancel), `closed` (the client
     * was closed), `network` (no answer from the server), `timeout`.
     */
    code;
    /** The HTTP status of a REST answer, when there was one. */
    status;
    constructor(code, message, status) {
        super(message);
        this.name = 'SwitchboardError';
        this.code = code;
        this.status = status;
    }
}
