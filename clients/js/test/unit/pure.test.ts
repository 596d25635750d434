// The SDK's pure logic: backoff, token schedule, outbox, ordering.
import { describe, expect, it } from 'vitest';
import { backoffCeiling, DEFAULT_BACKOFF, fullJitterDelay, restartDelay } from '../../src/backoff.js';
import { Outbox } from '../../src/outbox.js';
import { Sequencer } from '../../src/sequencer.js';
import { MemoryStorage } from '../../src/storage.js';
import { decodeToken, isExpired, refreshAt } from '../../src/token.js';
import { isUuidV4, uuidv4 } from '../../src/uuid.js';
import type { Message } from '../../src/protocol.js';
import { makeJwt, seeded } from './helpers.js';

describe('backoff', () => {
  it('grows from 500 ms to a 20 s ceiling', () => {
    const got = [0, 1, 2, 3, 4, 5, 6, 7, 50, 10_000].map((n) => backoffCeiling(n, DEFAULT_BACKOFF));
    expect(got).toEqual([500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000, 20000]);
  });

  it('is full jitter: uniform over [0, ceiling)', () => {
    const rnd = seeded(42);
    for (let attempt = 0; attempt < 10; attempt++) {
      const ceiling = backoffCeiling(attempt, DEFAULT_BACKOFF);
      const samples = Array.from({ length: 2000 }, () => fullJitterDelay(attempt, DEFAULT_BACKOFF, rnd));
      expect(Math.min(...samples)).toBeGreaterThanOrEqual(0);
      expect(Math.max(...samples)).toBeLessThan(ceiling);
      // Full (not equal) jitter: the bottom tenth of the window is used, and the mean is near half.
      expect(samples.some((s) => s < ceiling / 10)).toBe(true);
      const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
      expect(mean / ceiling).toBeGreaterThan(0.45);
      expect(mean / ceiling).toBeLessThan(0.55);
    }
  });

  it('spreads a restart over [0, restartDelayMs)', () => {
    const rnd = seeded(7);
    const s = Array.from({ length: 1000 }, () => restartDelay(DEFAULT_BACKOFF, rnd));
    expect(Math.min(...s)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...s)).toBeLessThan(DEFAULT_BACKOFF.restartDelayMs);
    expect(Math.max(...s)).toBeGreaterThan(DEFAULT_BACKOFF.restartDelayMs * 0.9);
  });
});

describe('token schedule', () => {
  it('reads sub, exp and iat', () => {
    const t = makeJwt({ sub: 'ann@example.com', iat: 1000, exp: 4600 });
    expect(decodeToken(t)).toEqual({ sub: 'ann@example.com', iat: 1000, exp: 4600 });
    expect(decodeToken('not a jwt')).toEqual({ sub: undefined, exp: undefined, iat: undefined });
  });

  it('refreshes a tenth of the lifetime before exp, between 5 s and 60 s', () => {
    const m = { minMarginMs: 5_000, maxMarginMs: 60_000 };
    // 1 h token: 60 s before.
    expect(refreshAt({ sub: 'a', iat: 0, exp: 3600 }, m)).toBe(3_600_000 - 60_000);
    // 5 min token: 30 s before.
    expect(refreshAt({ sub: 'a', iat: 0, exp: 300 }, m)).toBe(300_000 - 30_000);
    // 20 s token: 5 s before.
    expect(refreshAt({ sub: 'a', iat: 0, exp: 20 }, m)).toBe(15_000);
    expect(refreshAt({ sub: 'a', iat: undefined, exp: undefined }, m)).toBeUndefined();
    expect(isExpired({ sub: 'a', iat: 0, exp: 10 }, 10_000)).toBe(true);
    expect(isExpired({ sub: 'a', iat: 0, exp: 10 }, 9_999)).toBe(false);
  });
});

describe('uuid', () => {
  it('makes distinct v4 ids', () => {
    const ids = new Set(Array.from({ length: 1000 }, () => uuidv4()));
    expect(ids.size).toBe(1000);
    for (const id of ids) expect(isUuidV4(id)).toBe(true);
  });
});

describe('outbox', () => {
  it('survives a reload: a new Outbox on the same storage lists the same entries, in order', async () => {
    const storage = new MemoryStorage();
    const a = new Outbox(storage, 'k');
    await a.load();
    const e1 = await a.add('c1', 'one', 1);
    const e2 = await a.add('c1', 'two', 2);
    const e3 = await a.add('c2', 'three', 3);
    await a.fail(e3.client_msg_id, { code: 'too_large', message: 'x' });
    // "Reload": nothing but the storage is shared.
    const b = new Outbox(storage, 'k');
    await b.load();
    expect(b.list().map((e) => [e.client_msg_id, e.body, e.status])).toEqual([
      [e1.client_msg_id, 'one', 'pending'],
      [e2.client_msg_id, 'two', 'pending'],
      [e3.client_msg_id, 'three', 'failed'],
    ]);
    expect(isUuidV4(e1.client_msg_id)).toBe(true);
    await b.remove(e1.client_msg_id);
    const c = new Outbox(storage, 'k');
    await c.load();
    expect(c.list().map((e) => e.body)).toEqual(['two', 'three']);
  });

  it('is persisted before add() resolves', async () => {
    const storage = new MemoryStorage();
    const o = new Outbox(storage, 'k');
    const e = await o.add('c', 'hi', 1);
    expect(JSON.parse(storage.getItem('k')!)[0].client_msg_id).toBe(e.client_msg_id);
  });

  it('schedules resends: due at once, again after the timeout, deferred by a retryable error', async () => {
    const o = new Outbox(new MemoryStorage(), 'k');
    const e = await o.add('c', 'hi', 0);
    expect(o.due(0).length).toBe(1);
    o.markTransmitted(e.client_msg_id, 0, 5000);
    expect(o.due(4999).length).toBe(0);
    expect(o.due(5000).length).toBe(1);
    o.deferUntil(e.client_msg_id, 9000);
    expect(o.due(8999).length).toBe(0);
    o.resetTransmissions();
    expect(o.due(0).length).toBe(1);
    await o.fail(e.client_msg_id, { code: 'not_a_member', message: 'no' });
    expect(o.due(100_000).length).toBe(0);
    await o.retry(e.client_msg_id);
    expect(o.due(0).map((x) => x.client_msg_id)).toEqual([e.client_msg_id]);
  });

  it('ignores a corrupt stored value', async () => {
    const storage = new MemoryStorage();
    storage.setItem('k', '{not json');
    const o = new Outbox(storage, 'k');
    await o.load();
    expect(o.list()).toEqual([]);
  });
});

function msg(conv: string, seq: number): Message {
  return { conversation_id: conv, seq, message_id: `m${conv}${seq}`, sender_id: 'x', body: `${seq}`, created_at: '' };
}

describe('sequencer', () => {
  it('delivers in order and exactly once', () => {
    const s = new Sequencer();
    const out: number[] = [];
    for (const seq of [1, 2, 2, 1, 3]) out.push(...s.offer(msg('a', seq)).deliver.map((m) => m.seq));
    expect(out).toEqual([1, 2, 3]);
    expect(s.cursor('a')).toBe(3);
  });

  it('holds messages past a gap, asks for history, and releases them in order when it closes', () => {
    const s = new Sequencer();
    expect(s.offer(msg('a', 1)).deliver.length).toBe(1);
    const r4 = s.offer(msg('a', 4));
    expect(r4).toEqual({ deliver: [], gap: true });
    expect(s.offer(msg('a', 3)).gap).toBe(true);
    expect(s.offer(msg('a', 4)).deliver).toEqual([]); // repeat of a buffered one
    expect(s.highestKnown('a')).toBe(4);
    const fill = s.offer(msg('a', 2));
    expect(fill.deliver.map((m) => m.seq)).toEqual([2, 3, 4]);
    expect(fill.gap).toBe(false);
    expect(s.hasGap('a')).toBe(false);
  });

  it('keeps conversations apart', () => {
    const s = new Sequencer();
    expect(s.offer(msg('a', 1)).deliver.length).toBe(1);
    expect(s.offer(msg('b', 2)).gap).toBe(true);
    expect(s.cursor('a')).toBe(1);
    expect(s.cursor('b')).toBe(0);
  });

  it('any arrival order of 1..200 yields 1..200 once', () => {
    const rnd = seeded(3);
    const seqs = Array.from({ length: 200 }, (_, i) => i + 1);
    const arrivals = [...seqs, ...seqs.slice(0, 50)];
    for (let i = arrivals.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [arrivals[i], arrivals[j]] = [arrivals[j]!, arrivals[i]!];
    }
    const s = new Sequencer();
    const out: number[] = [];
    for (const seq of arrivals) out.push(...s.offer(msg('a', seq)).deliver.map((m) => m.seq));
    expect(out).toEqual(seqs);
  });

  it('starts from a persisted cursor and forgets on reset', () => {
    const s = new Sequencer();
    s.setCursor('a', 10);
    expect(s.offer(msg('a', 10)).deliver).toEqual([]);
    expect(s.offer(msg('a', 11)).deliver.length).toBe(1);
    s.reset('a');
    expect(s.cursor('a')).toBe(0);
    expect(s.offer(msg('a', 1)).deliver.length).toBe(1);
  });

  it('refuses nonsense seqs', () => {
    const s = new Sequencer();
    expect(s.offer(msg('a', 0)).deliver).toEqual([]);
    expect(s.offer(msg('a', -1)).deliver).toEqual([]);
    expect(s.offer(msg('a', 1.5)).deliver).toEqual([]);
  });
});
