// Generated from clients/js/src/rich.ts by clients/js/vendor-demo.sh: do not edit.
/**
 * Rich messages on the client side: the rule that turns a message and the edits, deletes and
 * reactions numbered after it into its current state (docs/protocol.md, "Message events",
 * "Applying them"), the same rule the server applies to history, so a page that applies live
 * `event`s shows what a reload shows.
 */
/**
 * The message after `event`, as a new object (`message` is not changed). An event of another
 * message, or of a deleted one, changes nothing (the same object is answered). `me` is the
 * caller's user id: it sets each reaction's `me`.
 *
 * - `edit`: the new `body`, `edited_at` = the event's `created_at`;
 * - `delete`: a tombstone (`deleted`, empty `body`, no reactions, no attachments);
 * - `reaction`: the sender's emoji set (replacing theirs) or removed; reactions stay sorted
 *   most used first (ties: first seen first).
 */
export function applyEvent(message, event, me) {
    if (event.message_id !== message.message_id || message.deleted)
        return message;
    switch (event.kind) {
        case 'edit':
            return { ...message, body: event.body ?? '', edited_at: event.created_at };
        case 'delete': {
            const { attachments: _a, reactions: _r, ...rest } = message;
            return { ...rest, body: '', deleted: true };
        }
        case 'reaction':
            return { ...message, reactions: setReaction(message.reactions ?? [], event.sender_id, event.emoji, me) };
        default:
            return message;
    }
}
/** `reactions` with `user`'s reaction set to `emoji` (undefined or null: removed). */
export function setReaction(reactions, user, emoji, me) {
    const out = [];
    for (const r of reactions) {
        const users = r.users.filter((u) => u !== user);
        if (r.emoji === emoji)
            users.push(user);
        if (users.length > 0)
            out.push({ emoji: r.emoji, count: users.length, me: me !== undefined && users.includes(me), users });
    }
    if (emoji && !out.some((r) => r.emoji === emoji)) {
        out.push({ emoji, count: 1, me: me !== undefined && user === me, users: [user] });
    }
    // Array.prototype.sort is stable: equal counts keep their order.
    return out.sort((a, b) => b.count - a.count);
}
/**
 * A message's `attachments` as the SDK hands them on: a live frame's ids become `{ id }`,
 * history's objects stay; anything else is dropped. Undefined when there are none.
 */
export function normalizeAttachments(raw) {
    if (!Array.isArray(raw))
        return undefined;
    const out = [];
    for (const a of raw) {
        if (typeof a === 'string' && a)
            out.push({ id: a });
        else if (a && typeof a === 'object' && typeof a.id === 'string')
            out.push({ ...a });
    }
    return out.length > 0 ? out : undefined;
}
/** Whether the attachment is an image the browser can show inline (by its declared type). */
export function isImage(a) {
    return typeof a.content_type === 'string' && /^image\/(png|jpeg|gif|webp)$/.test(a.content_type);
}
