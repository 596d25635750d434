// Generated from clients/js/src/backoff.ts by clients/js/vendor-demo.sh: do not edit.
/**
 * Reconnect delays.
 *
 * Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): the delay before
 * attempt `n` is uniform in `[0, min(max, min * 2^n))`. Clients that lost the same server at
 * the same moment spread over the whole window instead of arriving in waves, which is what a
 * registry and the surviving socket servers need after a crash.
 */
export const DEFAULT_BACKOFF = {
    minDelayMs: 500,
    maxDelayMs: 20_000,
    restartDelayMs: 5_000,
};
/** The window's ceiling for retry number `attempt` (0-based). */
export function backoffCeiling(attempt, opts) {
    // 2^attempt overflows to Infinity long after it passes any sane maximum; clamp first.
    const exp = Math.min(Math.max(0, attempt), 30);
    return Math.min(opts.maxDelayMs, opts.minDelayMs * 2 ** exp);
}
/** A full-jitter delay for retry number `attempt` (0-based); `random` returns `[0, 1)`. */
export function fullJitterDelay(attempt, opts, random) {
    return Math.floor(random() * backoffCeiling(attempt, opts));
}
/** The spread-out delay before the first attempt after a `1012` restart close. */
export function restartDelay(opts, random) {
    return Math.floor(random() * opts.restartDelayMs);
}
