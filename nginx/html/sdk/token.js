// Generated from clients/js/src/token.ts by clients/js/vendor-demo.sh: do not edit.
/**
 * What the SDK reads from a JWT without verifying it (the server verifies): `sub`, to keep
 * each user's outbox and cursors apart, and `exp`/`iat`, to refresh before expiry.
 */
function base64UrlDecode(s) {
    const b64 = s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4);
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
    return new TextDecoder().decode(bytes);
}
export function decodeToken(token) {
    try {
        const part = token.split('.')[1];
        if (!part)
            return { sub: undefined, exp: undefined, iat: undefined };
        const claims = JSON.parse(base64UrlDecode(part));
        return {
            sub: typeof claims.sub === 'string' ? claims.sub : undefined,
            exp: typeof claims.exp === 'number' ? claims.exp : undefined,
            iat: typeof claims.iat === 'number' ? claims.iat : undefined,
        };
    }
    catch {
        return { sub: undefined, exp: undefined, iat: undefined };
    }
}
/**
 * When to ask for a new token, in ms since the epoch: a tenth of the token's lifetime before
 * `exp`, at least `minMarginMs` and at most `maxMarginMs` before it. `undefined` for a token
 * without `exp`.
 */
export function refreshAt(info, opts) {
    if (info.exp === undefined)
        return undefined;
    const expMs = info.exp * 1000;
    const lifetime = info.iat !== undefined ? expMs - info.iat * 1000 : opts.maxMarginMs * 10;
    const margin = Math.min(opts.maxMarginMs, Math.max(opts.minMarginMs, lifetime / 10));
    return expMs - margin;
}
/** True when the token is past `exp` by the local clock (no skew allowance: refresh early). */
export function isExpired(info, nowMs) {
    return info.exp !== undefined && info.exp * 1000 <= nowMs;
}
