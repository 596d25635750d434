// Generated from clients/js/src/uuid.ts by clients/js/vendor-demo.sh: do not edit.
/** RFC 4122 version 4 UUIDs from the platform's CSPRNG (Web Crypto: Node 20 and browsers). */
export function uuidv4() {
    const c = globalThis.crypto;
    if (c && typeof c.randomUUID === 'function')
        return c.randomUUID();
    if (!c || typeof c.getRandomValues !== 'function') {
        throw new Error('no Web Crypto: a client_msg_id needs crypto.getRandomValues');
    }
    const b = c.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
export function isUuidV4(s) {
    return UUID_V4.test(s);
}
