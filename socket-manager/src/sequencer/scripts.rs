//! The sequence scripts: Lua run by the numbering batcher's flush (numbering, finish) or on
//! their own (reseed, release, renew), and their typed replies.

use switchboard_protocol::{MessageId, Timestamp};
use switchboard_redis::StoreError;

use crate::numbering::ScriptFunction;

/// The Lua literal of [`SEQ_IDLE_TTL_SECS`] (a macro, so the scripts' text can hold it).
macro_rules! seq_idle_ttl {
    () => {
        "604800"
    };
}

/// The Lua literal of [`EPOCH_EARLIER_SECS`].
macro_rules! epoch_earlier {
    () => {
        "3600"
    };
}

/// Seconds a conversation's counter (`seq:{c}`) lives after its last number, at least (three
/// idempotency ttls when that is longer, so it outlives every record and pending entry written
/// with its numbers). A conversation idle that long costs no Redis memory; its next send finds
/// the counter and its epoch gone and has the counter checked against the fenced log
/// (docs/architecture.md, "Fencing the log"), as after a failover.
pub const SEQ_IDLE_TTL_SECS: u64 = digits(seq_idle_ttl!());

/// The counter's epoch (`seq-epoch:{c}`) expires this much before the counter: a missing
/// epoch is safe (the counter is checked again), a counter gone before its epoch is not.
pub const EPOCH_EARLIER_SECS: u64 = digits(epoch_earlier!());

/// A decimal literal's value, at compile time (the scripts hold the text, the docs the number).
const fn digits(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut value = 0;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as u64;
        i += 1;
    }
    value
}

const _: () = assert!(SEQ_IDLE_TTL_SECS == 7 * 86_400 && EPOCH_EARLIER_SECS < SEQ_IDLE_TTL_SECS);

/// The numbering script's row for one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NumberedRow {
    pub seq: u64,
    pub message_id: MessageId,
    /// As the idempotency record holds it (RFC 3339, ms), checked.
    pub created_at: Timestamp,
    /// Numbered now (its record must be appended); `false`: a resend of a numbered message.
    pub fresh: bool,
}

/// The numbering script's reply, typed.
pub(super) struct NumberReply {
    /// A row per send, in the order of the sends.
    pub rows: Vec<NumberedRow>,
    pub members: Vec<String>,
    /// Each member's socket servers, when the script looked the routes up (below the
    /// broadcast threshold).
    pub found: Option<Vec<Vec<String>>>,
    /// The log epoch the counter was checked under: the records carry it.
    pub epoch: u64,
}

impl NumberReply {
    pub(super) fn parse(value: redis::Value) -> Result<Self, StoreError> {
        /// A row as the script answers it: seq, message_id, created_at, fresh (1 or 0).
        type WireRow = (u64, String, String, u8);
        type Wire = (Vec<WireRow>, Vec<String>, u8, Vec<Vec<String>>, u64);
        let (rows, members, looked_up, found, epoch): Wire = redis::from_owned_redis_value(value)
            .map_err(|e| {
            StoreError::Unavailable(format!("the numbering script answered: {e}"))
        })?;
        let rows = rows
            .into_iter()
            .map(|(seq, message_id, created_at, fresh)| {
                Ok(NumberedRow {
                    seq,
                    message_id: MessageId::parse(message_id).map_err(|e| {
                        StoreError::Unavailable(format!("an idempotency record's {e}"))
                    })?,
                    created_at: Timestamp::parse(&created_at).map_err(|e| {
                        StoreError::Unavailable(format!("an idempotency record's created_at: {e}"))
                    })?,
                    fresh: fresh == 1,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(NumberReply {
            rows,
            members,
            found: (looked_up == 1).then_some(found),
            epoch,
        })
    }
}

/// The finish script's reply, typed.
pub(super) struct FinishReply {
    /// The token still held the lease (and the acknowledged entries were cleared).
    pub held: bool,
}

impl FinishReply {
    pub(super) fn parse(value: redis::Value) -> Result<Self, StoreError> {
        let held: i64 = redis::from_owned_redis_value(value)
            .map_err(|e| StoreError::Unavailable(format!("the finish script answered: {e}")))?;
        Ok(FinishReply { held: held == 1 })
    }
}

/// A pending entry's value: `"{epoch}|{message JSON}"`. An entry written before epochs (plain
/// JSON) is epoch 0.
pub(super) fn split_pending(value: &str) -> (u64, &str) {
    match value.split_once('|') {
        Some((epoch, json)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            (epoch.parse().unwrap_or(0), json)
        }
        _ => (0, value),
    }
}

/// The sequence functions the numbering batcher's flush script calls (group-committed, one
/// `EVAL` per flush; see `numbering`).
pub const SEQUENCE_FUNCTIONS: [ScriptFunction; 2] = [NUMBER, FINISH];

/// The Lua the sequence functions share: the route lookup of the presence key family's owner
/// (`servers_of`).
pub const SEQUENCE_PREAMBLE: &str = switchboard_chat_state::presence::SERVERS_OF_LUA;

/// Checks that every sender is a member, takes the lease when it is free (one round trip for
/// "check, lock and number") and numbers a conversation's sends.
/// K: lease, counter, pending, counter epoch, then one idempotency key per send.
/// A: token, idempotency ttl (s), lease ttl (ms), the members from which the routes are not
/// looked up here (`SB_ROUTE_BROADCAST_FROM`), now (ms), the key prefix, the count `g` of
/// members the caller read itself, those `g` members, then per send: sender, message_id,
/// created_at, pending JSON; last, the key of the conversation's mirrored members
/// (`switchboard_chat_state::membership`). That key is an argument, not a key: the managers'
/// Redis user may only read the mirror (its owner is the message service), and a script's
/// declared keys need write access. `replid`: the replication id of the master it runs on.
/// Answers `{numbered, members, looked_up, found, epoch}`: `epoch` is the log epoch the
/// counter was checked under on this master (`seq-epoch:{c}` holds `"{replid} {epoch}"`), and
/// a pending entry is `"{epoch}|{JSON}"`, so a replayed record carries its own epoch. With `g` = 0 the members are the mirror's;
/// when it is cold (no set) or a sender is not in it, nothing is touched and the script refuses
/// with `MEMBERS`: the caller then reads them from the source of truth and calls again with
/// them. Below the broadcast threshold it also looks up where each member is connected
/// (`looked_up` 1, `found[i]` the socket servers of `members[i]`: the route lookup rides in the
/// flush instead of a round trip of its own).
pub(super) const NUMBER: ScriptFunction = ScriptFunction {
    name: "number",
    // A number is used only once the replicas hold it: a failover must not roll a counter
    // back under an acknowledged message.
    awaits_replicas: true,
    body: concat!(
        r"
local given = tonumber(A[7])
local members
if given > 0 then
  members = {}
  for i = 1, given do members[i] = A[7 + i] end
else
  members = redis.call('SMEMBERS', A[#A])
end
local is_member = {}
for _, m in ipairs(members) do is_member[m] = true end
local first_arg = 8 + given
for i = 5, #K do
  if not is_member[A[first_arg + (i - 5) * 4]] then
    return redis.error_reply('MEMBERS the senders are not all in the mirrored members')
  end
end
-- Takes the lease if it is free and reads its holder in one command (NX with GET: Redis 7).
local holder = redis.call('SET', K[1], A[1], 'NX', 'PX', A[3], 'GET')
if holder and holder ~= A[1] then
  return redis.error_reply('BUSY another holder numbers this conversation')
end
if redis.call('HLEN', K[3]) > 0 then
  return redis.error_reply('PENDING numbered messages await their append')
end
local checked = redis.call('GET', K[4])
local epoch = checked and string.match(checked, '^' .. replid .. ' (%d+)$')
-- A checked counter is always written (RESEED_LUA): one missing beside its epoch expired or
-- was lost, and must be checked again rather than restart at 1.
if not epoch or redis.call('EXISTS', K[2]) == 0 then
  return redis.error_reply('UNVERIFIED the counter was not checked against the log on this master')
end
local numbered_any = false
local out = {}
for i = 5, #K do
  local a = first_arg + (i - 5) * 4 + 1
  local known = redis.pcall('GET', K[i])
  if type(known) == 'table' then
    -- WRONGTYPE: a record from before they were strings, a hash of the same three fields.
    local fields = redis.call('HMGET', K[i], 'seq', 'message_id', 'created_at')
    known = fields[1] and table.concat(fields, ' ')
  end
  if known then
    local seq, message_id, created_at = string.match(known, '^(%d+) (%S+) (%S+)$')
    out[#out + 1] = {tonumber(seq), message_id, created_at, 0}
  else
    local seq = redis.call('INCR', K[2])
    redis.call('SET', K[i], seq .. ' ' .. A[a] .. ' ' .. A[a + 1], 'EX', A[2])
    redis.call('HSET', K[3], seq, epoch .. '|' .. A[a + 2])
    out[#out + 1] = {seq, A[a], A[a + 1], 1}
    numbered_any = true
  end
end
-- Pending entries live twice the idempotency ttl: never gone while a resend could still be
-- answered from the record written with them (that would say `sent` for a message never
-- logged), yet a conversation abandoned mid-outage does not hold its bodies forever. An entry
-- that old raised `switchboard_manager_pending_stale_total` long before.
if numbered_any then
  redis.call('EXPIRE', K[3], tonumber(A[2]) * 2)
  -- Idle expiry of the counter and its epoch, refreshed whenever a number is taken. The
  -- epoch goes first: a missing epoch only makes the next holder check the counter against
  -- the fenced log (a missing counter beside a live epoch would restart at 1). Both outlive
  -- the pending hash (twice the idempotency ttl) and every idempotency record.
  local idle = math.max(",
        seq_idle_ttl!(),
        r", tonumber(A[2]) * 3)
  redis.call('EXPIRE', K[2], idle)
  redis.call('EXPIRE', K[4], idle - ",
        epoch_earlier!(),
        r")
end
if #members < tonumber(A[4]) then
  return {out, members, 1, servers_of(A[6], members, A[5]), tonumber(epoch)}
end
return {out, members, 0, {}, tonumber(epoch)}"
    ),
};

/// K: lease, pending. A: token, release (1: give the lease up), lease ttl (ms; kept for the
/// call's shape), then the seqs whose append the broker acknowledged. While the token holds
/// the lease, clears those pending entries (they are in the log), gives the lease up if asked,
/// and answers 1; otherwise touches nothing and answers 0.
///
/// Not the holder, it must not clear anything: on a master that took over, the pending entries
/// under those seqs may be another holder's numbers (the failover lost these and the new
/// epoch handed them out again; see docs/architecture.md, "Fencing the log"). This token's own
/// appended records, if still pending here, are appended again by the next holder (the store
/// keeps one copy).
///
/// Its answer needs no `WAIT`: it is read on the master that runs the script, and the numbers
/// it vouches for were replicated by their own flush. A master that lost its replicas (deposed)
/// refuses the script's writes (`min-replicas-to-write`), so it cannot vouch for a deposed
/// holder. Writes of a finish that a failover loses cost no message: the cleared entries
/// reappear and the next holder appends those records again, and a lease not given up lapses
/// with its ttl.
pub(super) const FINISH: ScriptFunction = ScriptFunction {
    name: "finish",
    awaits_replicas: false,
    body: r"
if redis.call('GET', K[1]) ~= A[1] then return 0 end
-- HDEL takes many fields; unpack takes a few thousand values at most, hence the chunks.
for i = 4, #A, 1000 do redis.call('HDEL', K[2], unpack(A, i, math.min(i + 999, #A))) end
if A[2] == '1' then redis.call('DEL', K[1]) end
return 1",
};

// A number is used only once the replicas hold it (the promise across a failover): the build
// fails if that is ever switched off.
const _: () = assert!(NUMBER.awaits_replicas);

/// KEYS: lease, counter, counter epoch, then the idempotency key of each message restored.
/// ARGV: token, `"{replid} {epoch}"` (the master's replication id and the log epoch the
/// message service fenced), the fence's floor, the counter the caller read, then per message:
/// seq, message_id, created_at, its remaining idempotency ttl (s). Raises the counter to the
/// floor, restores the newest idempotency records lost with those numbers (each with the
/// lifetime it had left), marks the counter checked on this master under the new epoch;
/// answers the counter as it was.
pub(super) const RESEED_LUA: &str = concat!(
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOLEASE the sequence lease is not held')
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[4]) then
  return redis.error_reply('UNVERIFIED the counter moved while it was checked')
end
local floor = tonumber(ARGV[3])
-- Written even when not raised (a new conversation's 0), so that a live epoch always has its
-- counter beside it; both with an idle expiry, the epoch's the earlier (see NUMBER).
redis.call('SET', KEYS[2], math.max(floor, current), 'EX', ",
    seq_idle_ttl!(),
    r")
for i = 4, #KEYS do
  local a = 5 + (i - 4) * 4
  -- NX: a record that survived (in either format) stays as it is.
  redis.call('SET', KEYS[i], ARGV[a] .. ' ' .. ARGV[a + 1] .. ' ' .. ARGV[a + 2], 'EX', ARGV[a + 3], 'NX')
end
-- The replication id as this master has it now, not as the caller's connection read it when
-- it connected: a master changes it when it creates its backlog (its first replica after a
-- restart), and a stale one would leave the counter unverified for every later numbering.
local live = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
local epoch = string.match(ARGV[2], ' (%d+)$')
redis.call('SET', KEYS[3], live .. ' ' .. epoch, 'EX', ",
    seq_idle_ttl!(),
    " - ",
    epoch_earlier!(),
    r")
return current
"
);

/// Why numbering did not happen.
#[derive(Debug, thiserror::Error)]
pub(super) enum NumberingError {
    #[error("numbers of an earlier hold await their append")]
    Pending,
    #[error("the counter has not been checked against the log on this master")]
    Unverified,
    #[error("the sequence lease was lost")]
    LeaseLost,
    #[error("another holder numbers this conversation")]
    Busy,
    /// The mirror could not vouch for every sender (cold, or one is not in it); nothing was
    /// touched.
    #[error("membership must be read from the source of truth")]
    Members,
    #[error("only {acked} of {wanted} replicas acknowledged the numbers")]
    NotReplicated { acked: i64, wanted: u32 },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for NumberingError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Command(err) = &e {
            match err.code() {
                Some("PENDING") => return NumberingError::Pending,
                Some("UNVERIFIED") => return NumberingError::Unverified,
                Some("NOLEASE") => return NumberingError::LeaseLost,
                Some("BUSY") => return NumberingError::Busy,
                Some("MEMBERS") => return NumberingError::Members,
                _ => {}
            }
        }
        NumberingError::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numbering::{NumberingBatcher, ScriptCall, ScriptReply};
    use crate::sequencer::RouteTargets;
    use redis::Value;
    use std::time::Duration;
    use switchboard_chat_state::presence::{group_by_server, ServerMap};
    use switchboard_redis::SentinelRedis;
    use switchboard_service_kit::supervise::Workers;

    /// The message service's Redis user on the key space of `redis` (a manager's).
    fn as_message_service(redis: &SentinelRedis) -> SentinelRedis {
        let mut config = switchboard_test_support::shared::redis_config("message-service", "x");
        config.key_prefix = redis.config().key_prefix.clone();
        SentinelRedis::new(config)
    }

    /// A fresh key space on the test binary's real Redis and a batcher running the sequence
    /// functions on it (no replicas asked for); keep the workers for as long as the batcher.
    fn sequence_scripts(name: &str) -> (SentinelRedis, NumberingBatcher, Workers) {
        let redis = switchboard_test_support::shared::fresh_redis("socket-manager", name);
        let mut workers = Workers::new();
        let batcher = NumberingBatcher::start(
            vec![redis.clone()],
            SEQUENCE_PREAMBLE,
            &SEQUENCE_FUNCTIONS,
            0,
            Duration::from_secs(2),
            &mut workers,
        );
        (redis, batcher, workers)
    }

    #[test]
    fn pending_entries_name_their_epoch_and_old_ones_are_epoch_0() {
        assert_eq!(split_pending("7|{\"a\":1}"), (7, "{\"a\":1}"));
        assert_eq!(split_pending("{\"a\":\"x|y\"}"), (0, "{\"a\":\"x|y\"}"));
        assert_eq!(split_pending("|{}"), (0, "|{}"));
    }

    /// The finish script against the test binary's real Redis: giving the lease up deletes it
    /// only for its holder; a lease another holder took in the meantime stays theirs, and so
    /// do the pending entries under the finished seqs (they may be that holder's numbers).
    #[tokio::test(flavor = "current_thread")]
    async fn finishing_gives_up_only_its_own_lease() {
        let (redis, batcher, _workers) = sequence_scripts("finish-lease");
        let lease = redis.key("lock:conv:c1");
        let pending = redis.key("pending:c1");
        let finish = |token: &str, release: bool| ScriptCall {
            function: FINISH.name,
            keys: vec![lease.clone(), pending.clone()],
            args: vec![
                token.to_owned(),
                if release { "1" } else { "0" }.to_owned(),
                "30000".to_owned(),
                "7".to_owned(),
            ],
        };
        let set = |value: &str| {
            redis::cmd("SET")
                .arg(&lease)
                .arg(value)
                .arg("PX")
                .arg(30_000)
                .clone()
        };

        let _: () = redis.query(&set("theirs")).await.unwrap();
        let _: i64 = redis
            .query(redis::cmd("HSET").arg(&pending).arg(7).arg("{}"))
            .await
            .unwrap();
        let lost = batcher.run(finish("mine", true)).await.unwrap();
        assert_eq!(lost.value, Value::Int(0), "a lease another holder took");
        let holder: Option<String> = redis.query(redis::cmd("GET").arg(&lease)).await.unwrap();
        assert_eq!(holder.as_deref(), Some("theirs"), "stays theirs");
        let expiry: i64 = redis.query(redis::cmd("PTTL").arg(&lease)).await.unwrap();
        assert!(expiry > 0, "with an expiry ({expiry} ms)");
        let left: i64 = redis.query(redis::cmd("HLEN").arg(&pending)).await.unwrap();
        assert_eq!(
            left, 1,
            "not the holder: seq 7 may be the holder's own number now, left alone"
        );

        let _: () = redis.query(&set("mine")).await.unwrap();
        let kept = batcher.run(finish("mine", false)).await.unwrap();
        assert_eq!(kept.value, Value::Int(1));
        let released = batcher.run(finish("mine", true)).await.unwrap();
        assert_eq!(released.value, Value::Int(1));
        let holder: Option<String> = redis.query(redis::cmd("GET").arg(&lease)).await.unwrap();
        assert_eq!(holder, None, "its own lease is given up");
        let gone = batcher.run(finish("mine", true)).await.unwrap();
        assert_eq!(gone.value, Value::Int(0), "a lease that expired is lost");
    }

    /// The numbering script checks the senders against the mirrored members itself: a cold
    /// mirror or a sender not in it is refused with `MEMBERS` before anything is touched;
    /// members in the mirror, or given by the caller, are numbered and answered with them.
    #[tokio::test(flavor = "current_thread")]
    async fn numbering_checks_the_senders_against_the_mirrored_members() {
        let (redis, batcher, _workers) = sequence_scripts("number-members");
        let key = |suffix: &str| redis.key(suffix);
        let info: String = redis
            .query(redis::cmd("INFO").arg("replication"))
            .await
            .unwrap();
        let replid = info
            .lines()
            .find_map(|l| l.strip_prefix("master_replid:"))
            .unwrap()
            .trim()
            .to_owned();
        let _: () = redis
            .query(
                redis::cmd("SET")
                    .arg(key("seq-epoch:c1"))
                    .arg(format!("{replid} 4")),
            )
            .await
            .unwrap();
        // A checked counter is written beside its epoch (the reseed), even at 0.
        let _: () = redis
            .query(redis::cmd("SET").arg(key("seq:c1")).arg(0))
            .await
            .unwrap();
        let number = |token: &str, given: &[&str], senders: &[&str]| {
            let mut keys = vec![
                key("lock:conv:c1"),
                key("seq:c1"),
                key("pending:c1"),
                key("seq-epoch:c1"),
            ];
            let mut args = vec![
                token.to_owned(),
                "60".to_owned(),
                "30000".to_owned(),
                // Routes looked up below three members.
                "3".to_owned(),
                switchboard_chat_state::presence::now_ms().to_string(),
                redis.config().key_prefix.clone(),
                given.len().to_string(),
            ];
            args.extend(given.iter().map(|m| m.to_string()));
            for (i, sender) in senders.iter().enumerate() {
                keys.push(key(&format!("idem:c1:{sender}:m{i}")));
                args.extend([
                    sender.to_string(),
                    // A message id: a ULID, as the sequencer makes them.
                    ulid::Ulid::new().to_string(),
                    "2026-12-02T00:00:00.000Z".to_owned(),
                    "{}".to_owned(),
                ]);
            }
            args.push(key("members:c1"));
            ScriptCall {
                function: NUMBER.name,
                keys,
                args,
            }
        };
        let refused = |reply: ScriptReply| match reply.value {
            Value::ServerError(e) => e.code() == "MEMBERS",
            _ => false,
        };
        let untouched = || async {
            let lease: Option<String> = redis
                .query(redis::cmd("GET").arg(key("lock:conv:c1")))
                .await
                .unwrap();
            let counter: Option<u64> = redis
                .query(redis::cmd("GET").arg(key("seq:c1")))
                .await
                .unwrap();
            lease.is_none() && counter == Some(0)
        };

        let cold = batcher.run(number("t1", &[], &["alice"])).await.unwrap();
        assert!(refused(cold), "a cold mirror vouches for nobody");
        assert!(untouched().await);

        // The mirror is the message service's to write (the managers only read it).
        let mirror = as_message_service(&redis);
        let _: i64 = mirror
            .query(
                redis::cmd("SADD")
                    .arg(key("members:c1"))
                    .arg("alice")
                    .arg("bob"),
            )
            .await
            .unwrap();
        let stranger = batcher
            .run(number("t1", &[], &["alice", "carol"]))
            .await
            .unwrap();
        assert!(refused(stranger), "carol is not a member");
        assert!(untouched().await);

        let handlers = ServerMap::new(redis.clone(), 60_000, 60_000);
        handlers.connected("h1", &["alice"]).await.unwrap();
        let reply = batcher
            .run(number("t1", &[], &["alice", "bob"]))
            .await
            .unwrap();
        let NumberReply {
            rows,
            members,
            found,
            epoch,
        } = NumberReply::parse(reply.value).unwrap();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(sorted, ["alice", "bob"]);
        assert_eq!(epoch, 4, "the epoch the counter was checked under");
        let found = found.expect("two members: the routes are looked up too");
        assert_eq!(
            group_by_server(&members, found),
            RouteTargets::from([("h1".to_owned(), vec!["alice".to_owned()])])
        );
        assert_eq!(
            rows.iter()
                .map(|r| (r.seq, u8::from(r.fresh)))
                .collect::<Vec<_>>(),
            [(1, 1), (2, 1)]
        );
        let pending: String = redis
            .query(redis::cmd("HGET").arg(key("pending:c1")).arg(1))
            .await
            .unwrap();
        assert_eq!(
            split_pending(&pending),
            (4, "{}"),
            "a pending entry names its epoch"
        );
        let ttl: i64 = redis
            .query(redis::cmd("TTL").arg(key("pending:c1")))
            .await
            .unwrap();
        assert!(
            (1..=120).contains(&ttl),
            "pending entries expire (twice the idempotency ttl): {ttl}"
        );
        // Given by the caller, the members need no mirror.
        let _: i64 = mirror
            .query(redis::cmd("DEL").arg(key("members:c1")))
            .await
            .unwrap();
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("pending:c1")))
            .await
            .unwrap();
        let given = batcher
            .run(number("t1", &["carol", "dave"], &["carol"]))
            .await
            .unwrap();
        let given = NumberReply::parse(given.value).unwrap();
        assert_eq!(given.members, ["carol", "dave"]);
        assert_eq!(given.rows[0].seq, 3);
        assert!(given.found.is_some());
        // From three members on, the routes are left to the caller (a broadcast).
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("pending:c1")))
            .await
            .unwrap();
        let many = batcher
            .run(number("t1", &["carol", "dave", "erin"], &["carol"]))
            .await
            .unwrap();
        assert!(NumberReply::parse(many.value).unwrap().found.is_none());
        // A counter checked on another master (or before epochs) is refused as unverified.
        let _: () = redis
            .query(redis::cmd("SET").arg(key("seq-epoch:c1")).arg(&replid))
            .await
            .unwrap();
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("pending:c1")))
            .await
            .unwrap();
        let unverified = batcher
            .run(number("t1", &["carol"], &["carol"]))
            .await
            .unwrap();
        assert!(
            matches!(&unverified.value, Value::ServerError(e) if e.code() == "UNVERIFIED"),
            "{:?}",
            unverified.value
        );
    }

    /// The counter and its epoch expire when idle, together and the epoch first: numbering
    /// refreshes both (at least [`SEQ_IDLE_TTL_SECS`], three idempotency ttls when longer),
    /// the reseed writes both (the counter even when it stays 0), and a counter missing beside
    /// a live epoch is never restarted at 1: the script asks for the check against the log.
    #[tokio::test(flavor = "current_thread")]
    async fn the_counter_and_its_epoch_expire_together_when_idle() {
        let (redis, batcher, _workers) = sequence_scripts("idle-ttl");
        let key = |suffix: &str| redis.key(suffix);
        let info: String = redis
            .query(redis::cmd("INFO").arg("replication"))
            .await
            .unwrap();
        let replid = info
            .lines()
            .find_map(|l| l.strip_prefix("master_replid:"))
            .unwrap()
            .trim()
            .to_owned();
        let ttl = |k: String| {
            let redis = redis.clone();
            async move {
                let ttl: i64 = redis.query(redis::cmd("TTL").arg(k)).await.unwrap();
                ttl
            }
        };
        // The reseed of a new conversation (floor 0) under a lease this token holds.
        let _: () = redis
            .query(
                redis::cmd("SET")
                    .arg(key("lock:conv:c1"))
                    .arg("t1")
                    .arg("PX")
                    .arg(30_000),
            )
            .await
            .unwrap();
        let was: u64 = redis
            .query(
                redis::cmd("EVAL")
                    .arg(RESEED_LUA)
                    .arg(3)
                    .arg(key("lock:conv:c1"))
                    .arg(key("seq:c1"))
                    .arg(key("seq-epoch:c1"))
                    .arg("t1")
                    .arg(format!("{replid} 1"))
                    .arg(0)
                    .arg(0),
            )
            .await
            .unwrap();
        assert_eq!(was, 0);
        let counter: Option<u64> = redis
            .query(redis::cmd("GET").arg(key("seq:c1")))
            .await
            .unwrap();
        assert_eq!(counter, Some(0), "written even at 0, beside its epoch");
        let (seq_ttl, epoch_ttl) = (ttl(key("seq:c1")).await, ttl(key("seq-epoch:c1")).await);
        assert!(
            seq_ttl > (SEQ_IDLE_TTL_SECS - 10) as i64 && seq_ttl <= SEQ_IDLE_TTL_SECS as i64,
            "{seq_ttl}"
        );
        assert_eq!(
            seq_ttl - epoch_ttl,
            EPOCH_EARLIER_SECS as i64,
            "the epoch goes first"
        );

        let number = |idem_ttl: u64, cmid: &str| ScriptCall {
            function: NUMBER.name,
            keys: vec![
                key("lock:conv:c1"),
                key("seq:c1"),
                key("pending:c1"),
                key("seq-epoch:c1"),
                key(&format!("idem:c1:alice:{cmid}")),
            ],
            args: vec![
                "t1".to_owned(),
                idem_ttl.to_string(),
                "30000".to_owned(),
                "16".to_owned(),
                switchboard_chat_state::presence::now_ms().to_string(),
                redis.config().key_prefix.clone(),
                "1".to_owned(),
                "alice".to_owned(),
                "alice".to_owned(),
                // A message id: a ULID, as the sequencer makes them (one per call, like
                // the sequencer's; a resend answers the first).
                ulid::Ulid::new().to_string(),
                "2026-12-02T00:00:00.000Z".to_owned(),
                "{}".to_owned(),
                key("members:c1"),
            ],
        };
        // Shorten both, as time would; a number refreshes them.
        for k in ["seq:c1", "seq-epoch:c1"] {
            let _: i64 = redis
                .query(redis::cmd("EXPIRE").arg(key(k)).arg(100))
                .await
                .unwrap();
        }
        let reply = batcher.run(number(60, "a")).await.unwrap();
        assert_eq!(NumberReply::parse(reply.value).unwrap().rows[0].seq, 1);
        let (seq_ttl, epoch_ttl) = (ttl(key("seq:c1")).await, ttl(key("seq-epoch:c1")).await);
        assert!(seq_ttl > (SEQ_IDLE_TTL_SECS - 10) as i64, "{seq_ttl}");
        assert_eq!(seq_ttl - epoch_ttl, EPOCH_EARLIER_SECS as i64);
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("pending:c1")))
            .await
            .unwrap();
        // A long idempotency ttl: the counter outlives three of them.
        let long = SEQ_IDLE_TTL_SECS;
        let reply = batcher.run(number(long, "b")).await.unwrap();
        assert_eq!(NumberReply::parse(reply.value).unwrap().rows[0].seq, 2);
        let seq_ttl = ttl(key("seq:c1")).await;
        assert!(seq_ttl > (3 * long - 10) as i64, "{seq_ttl}");
        let pending_ttl = ttl(key("pending:c1")).await;
        assert!(
            pending_ttl < seq_ttl,
            "pending entries go before the counter"
        );
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("pending:c1")))
            .await
            .unwrap();

        // The counter alone lost (expired past an epoch from an older manager, or evicted):
        // refused as unverified, never numbered from 1 again.
        let _: i64 = redis
            .query(redis::cmd("DEL").arg(key("seq:c1")))
            .await
            .unwrap();
        let reply = batcher.run(number(60, "c")).await.unwrap();
        assert!(
            matches!(&reply.value, Value::ServerError(e) if e.code() == "UNVERIFIED"),
            "{:?}",
            reply.value
        );
    }
}
