// Generated from clients/js/src/emitter.ts by clients/js/vendor-demo.sh: do not edit.
/** A minimal typed event emitter: every `on()` answers its own unsubscribe function. */
export class Emitter {
    handlers = new Map();
    on(event, handler) {
        let set = this.handlers.get(event);
        if (!set) {
            set = new Set();
            this.handlers.set(event, set);
        }
        // Wrapped so the same function registered twice is two subscriptions, each removable.
        const wrapped = (p) => handler(p);
        set.add(wrapped);
        return () => {
            set.delete(wrapped);
        };
    }
    emit(event, payload) {
        const set = this.handlers.get(event);
        if (!set)
            return;
        for (const h of [...set]) {
            try {
                h(payload);
            }
            catch (e) {
                // An app handler that throws must not break the SDK's own bookkeeping.
                const report = globalThis.reportError;
                if (report)
                    report(e);
                else
                    console.error('switchboard: an event handler threw', e);
            }
        }
    }
    count(event) {
        return this.handlers.get(event)?.size ?? 0;
    }
}
