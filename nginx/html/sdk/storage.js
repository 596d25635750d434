// Generated from clients/js/src/storage.ts by clients/js/vendor-demo.sh: do not edit.
/**
 * Where the SDK keeps what must survive a reload: the outbox and the per-conversation cursors.
 *
 * The interface is the `localStorage` one, with results that may be promises, so React
 * Native's AsyncStorage fits as is. Values are JSON strings.
 */
/** A storage that lives as long as the object (tests, servers, private windows). */
export class MemoryStorage {
    map = new Map();
    getItem(key) {
        return this.map.get(key) ?? null;
    }
    setItem(key, value) {
        this.map.set(key, value);
    }
    removeItem(key) {
        this.map.delete(key);
    }
    /** Every key, for tests. */
    keys() {
        return [...this.map.keys()];
    }
}
/** `localStorage` when the platform has a working one, else a fresh {@link MemoryStorage}. */
export function defaultStorage() {
    try {
        const ls = globalThis.localStorage;
        if (ls) {
            // Safari's private mode and some embedded views throw on the first write.
            const probe = '__switchboard_probe__';
            ls.setItem(probe, '1');
            ls.removeItem(probe);
            return ls;
        }
    }
    catch {
        /* fall through */
    }
    return new MemoryStorage();
}
export async function readJson(storage, key, fallback) {
    try {
        const raw = await storage.getItem(key);
        if (raw == null)
            return fallback;
        return JSON.parse(raw);
    }
    catch {
        // A corrupt entry must not stop the client; it starts empty.
        return fallback;
    }
}
export async function writeJson(storage, key, value) {
    await storage.setItem(key, JSON.stringify(value));
}
