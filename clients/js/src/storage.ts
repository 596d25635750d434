/**
 * Where the SDK keeps what must survive a reload: the outbox and the per-conversation cursors.
 *
 * The interface is the `localStorage` one, with results that may be promises, so React
 * Native's AsyncStorage fits as is. Values are JSON strings.
 */

export interface KeyValueStorage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

/** A storage that lives as long as the object (tests, servers, private windows). */
export class MemoryStorage implements KeyValueStorage {
  private readonly map = new Map<string, string>();
  getItem(key: string): string | null {
    return this.map.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.map.set(key, value);
  }
  removeItem(key: string): void {
    this.map.delete(key);
  }
  /** Every key, for tests. */
  keys(): string[] {
    return [...this.map.keys()];
  }
}

/** `localStorage` when the platform has a working one, else a fresh {@link MemoryStorage}. */
export function defaultStorage(): KeyValueStorage {
  try {
    const ls = (globalThis as { localStorage?: Storage }).localStorage;
    if (ls) {
      // Safari's private mode and some embedded views throw on the first write.
      const probe = '__switchboard_probe__';
      ls.setItem(probe, '1');
      ls.removeItem(probe);
      return ls;
    }
  } catch {
    /* fall through */
  }
  return new MemoryStorage();
}

export async function readJson<T>(storage: KeyValueStorage, key: string, fallback: T): Promise<T> {
  try {
    const raw = await storage.getItem(key);
    if (raw == null) return fallback;
    return JSON.parse(raw) as T;
  } catch {
    // A corrupt entry must not stop the client; it starts empty.
    return fallback;
  }
}

export async function writeJson(storage: KeyValueStorage, key: string, value: unknown): Promise<void> {
  await storage.setItem(key, JSON.stringify(value));
}
