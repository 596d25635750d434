/**
 * What the SDK reads from a JWT without verifying it (the server verifies): `sub`, to keep
 * each user's outbox and cursors apart, and `exp`/`iat`, to refresh before expiry.
 */

export interface TokenInfo {
  sub: string | undefined;
  /** Seconds since the epoch. */
  exp: number | undefined;
  iat: number | undefined;
}

function base64UrlDecode(s: string): string {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4);
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

export function decodeToken(token: string): TokenInfo {
  try {
    const part = token.split('.')[1];
    if (!part) return { sub: undefined, exp: undefined, iat: undefined };
    const claims = JSON.parse(base64UrlDecode(part)) as Record<string, unknown>;
    return {
      sub: typeof claims.sub === 'string' ? claims.sub : undefined,
      exp: typeof claims.exp === 'number' ? claims.exp : undefined,
      iat: typeof claims.iat === 'number' ? claims.iat : undefined,
    };
  } catch {
    return { sub: undefined, exp: undefined, iat: undefined };
  }
}

/**
 * When to ask for a new token, in ms since the epoch: a tenth of the token's lifetime before
 * `exp`, at least `minMarginMs` and at most `maxMarginMs` before it. `undefined` for a token
 * without `exp`.
 */
export function refreshAt(
  info: TokenInfo,
  opts: { minMarginMs: number; maxMarginMs: number },
): number | undefined {
  if (info.exp === undefined) return undefined;
  const expMs = info.exp * 1000;
  const lifetime = info.iat !== undefined ? expMs - info.iat * 1000 : opts.maxMarginMs * 10;
  const margin = Math.min(opts.maxMarginMs, Math.max(opts.minMarginMs, lifetime / 10));
  return expMs - margin;
}

/** True when the token is past `exp` by the local clock (no skew allowance: refresh early). */
export function isExpired(info: TokenInfo, nowMs: number): boolean {
  return info.exp !== undefined && info.exp * 1000 <= nowMs;
}
