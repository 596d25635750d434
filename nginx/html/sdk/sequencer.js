// Generated from clients/js/src/sequencer.ts by clients/js/vendor-demo.sh: do not edit.
/**
 * Exactly-once, in-order delivery per conversation: the pure part.
 *
 * Each conversation has a cursor, the highest `seq` such that every record `1..cursor` (a
 * message, or an edit, delete or reaction: one sequence) has been handed to the app. A message at `cursor + 1` is delivered at once (with whatever it
 * unblocks from the buffer); one at or below the cursor is a repeat and dropped; one further
 * ahead waits in a bounded buffer and the caller is told to fetch the gap from history
 * (`after_seq = cursor`).
 */
export class Sequencer {
    maxBuffered;
    convs = new Map();
    /** `maxBuffered`: messages held per conversation while a gap is open; more are dropped (history brings them back). */
    constructor(maxBuffered = 10_000) {
        this.maxBuffered = maxBuffered;
    }
    conv(id) {
        let c = this.convs.get(id);
        if (!c) {
            c = { cursor: 0, buffer: new Map() };
            this.convs.set(id, c);
        }
        return c;
    }
    cursor(conversationId) {
        return this.convs.get(conversationId)?.cursor ?? 0;
    }
    /** Every conversation's cursor (what is persisted). */
    cursors() {
        const out = {};
        for (const [id, c] of this.convs)
            out[id] = c.cursor;
        return out;
    }
    /** Sets a cursor (loading persisted state, or a store reset). Drops the buffer at or below it. */
    setCursor(conversationId, cursor) {
        const c = this.conv(conversationId);
        c.cursor = cursor;
        for (const seq of [...c.buffer.keys()])
            if (seq <= cursor)
                c.buffer.delete(seq);
    }
    /** Forgets a conversation entirely (store reset): its cursor goes back to 0. */
    reset(conversationId) {
        this.convs.delete(conversationId);
    }
    /** The highest buffered `seq`, or the cursor when nothing waits. */
    highestKnown(conversationId) {
        const c = this.convs.get(conversationId);
        if (!c)
            return 0;
        let hi = c.cursor;
        for (const seq of c.buffer.keys())
            if (seq > hi)
                hi = seq;
        return hi;
    }
    hasGap(conversationId) {
        const c = this.convs.get(conversationId);
        return !!c && c.buffer.size > 0;
    }
    offer(msg) {
        const seq = msg.seq;
        if (!Number.isSafeInteger(seq) || seq < 1)
            return { deliver: [], gap: false };
        const c = this.conv(msg.conversation_id);
        if (seq <= c.cursor || c.buffer.has(seq)) {
            return { deliver: [], gap: c.buffer.size > 0 };
        }
        if (seq > c.cursor + 1) {
            if (c.buffer.size < this.maxBuffered)
                c.buffer.set(seq, msg);
            return { deliver: [], gap: true };
        }
        const deliver = [msg];
        c.cursor = seq;
        for (;;) {
            const next = c.buffer.get(c.cursor + 1);
            if (!next)
                break;
            c.buffer.delete(c.cursor + 1);
            c.cursor += 1;
            deliver.push(next);
        }
        return { deliver, gap: c.buffer.size > 0 };
    }
}
