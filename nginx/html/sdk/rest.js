// Generated from clients/js/src/rest.ts by clients/js/vendor-demo.sh: do not edit.
/** The REST calls of docs/protocol.md, with the protocol's error body turned into {@link SwitchboardError}. */
import { SwitchboardError } from './errors.js';
export async function restCall(fetchFn, url, opts = {}) {
    const headers = { accept: 'application/json' };
    if (opts.body !== undefined)
        headers['content-type'] = 'application/json';
    if (opts.token)
        headers.authorization = `Bearer ${opts.token}`;
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), opts.timeoutMs ?? 10_000);
    const onAbort = () => ctrl.abort();
    opts.signal?.addEventListener('abort', onAbort);
    let res;
    try {
        res = await fetchFn(url, {
            method: opts.method ?? 'GET',
            headers,
            body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
            signal: ctrl.signal,
        });
    }
    catch (e) {
        throw new SwitchboardError(ctrl.signal.aborted ? 'timeout' : 'network', `${opts.method ?? 'GET'} ${url}: ${e instanceof Error ? e.message : String(e)}`);
    }
    finally {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
    }
    const text = await res.text().catch(() => '');
    let json = undefined;
    if (text) {
        try {
            json = JSON.parse(text);
        }
        catch {
            /* not JSON: a proxy's error page */
        }
    }
    if (!res.ok) {
        const err = json?.error;
        const code = err?.code ?? (res.status === 401 ? 'unauthorized' : res.status >= 500 ? 'unavailable' : 'bad_request');
        throw new SwitchboardError(code, err?.message ?? `HTTP ${res.status}`, res.status);
    }
    return json;
}
