/** One error type for everything the SDK rejects with, carrying the protocol's stable codes. */

export class SwitchboardError extends Error {
  /**
   * A code of the protocol's table (`unauthorized`, `not_a_member`, `too_large`, ...) or one of
   * the SDK's own: `cancelled` (disconnect, close or an outbox cancel), `closed` (the client
   * was closed), `network` (no answer from the server), `timeout`.
   */
  readonly code: string;
  /** The HTTP status of a REST answer, when there was one. */
  readonly status: number | undefined;
  constructor(code: string, message: string, status?: number) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
    this.status = status;
  }
}
