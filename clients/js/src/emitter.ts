/** A minimal typed event emitter: every `on()` answers its own unsubscribe function. */

export type Unsubscribe = () => void;

export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private readonly handlers = new Map<keyof Events, Set<(payload: never) => void>>();

  on<K extends keyof Events>(event: K, handler: (payload: Events[K]) => void): Unsubscribe {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    // Wrapped so the same function registered twice is two subscriptions, each removable.
    const wrapped = (p: never) => handler(p as Events[K]);
    set.add(wrapped);
    return () => {
      set!.delete(wrapped);
    };
  }

  emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const h of [...set]) {
      try {
        (h as (p: Events[K]) => void)(payload);
      } catch (e) {
        // An app handler that throws must not break the SDK's own bookkeeping.
        const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
        if (report) report(e);
        else console.error('switchboard: an event handler threw', e);
      }
    }
  }

  count<K extends keyof Events>(event: K): number {
    return this.handlers.get(event)?.size ?? 0;
  }
}
