//! The chat scenarios: idle connections (s1), 1:1 pairs (s2) and groups (s3).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use switchboard_client::{Api, FrameSender};
use switchboard_protocol::frames::ServerFrame;

use crate::stats::{p99_ms, percentiles};
use crate::util::{api, bounded, now_us, token};
use crate::Args;

/// `(step, seq, latency µs)` of every message a receiver saw.
type ReceiverLog = Arc<Mutex<Vec<(u32, u64, u64)>>>;

/// What a sender saw: `(step, seq)` of each `sent`, and errors per step.
#[derive(Default)]
struct SenderLog {
    acked: Vec<(u32, u64)>,
    errors: HashMap<u32, u64>,
}

fn step_of(text: &str) -> Option<u32> {
    text.split([':', '-']).next()?.parse().ok()
}

fn receiver_callback(log: ReceiverLog) -> impl FnMut(ServerFrame) + Send + 'static {
    move |frame| {
        if let ServerFrame::Message { seq, body, .. } = frame {
            let now = now_us();
            let mut parts = body.splitn(2, ':');
            let step = parts.next().and_then(|s| s.parse().ok());
            let sent = parts.next().and_then(|s| s.parse::<u64>().ok());
            if let (Some(step), Some(sent)) = (step, sent) {
                log.lock()
                    .unwrap()
                    .push((step, seq, now.saturating_sub(sent)));
            }
        }
    }
}

fn sender_callback(log: Arc<Mutex<SenderLog>>) -> impl FnMut(ServerFrame) + Send + 'static {
    move |frame| match frame {
        ServerFrame::Sent {
            client_msg_id, seq, ..
        } => {
            if let Some(step) = step_of(&client_msg_id) {
                log.lock().unwrap().acked.push((step, seq));
            }
        }
        ServerFrame::Error {
            client_msg_id: Some(id),
            ..
        } => {
            if let Some(step) = step_of(&id) {
                *log.lock().unwrap().errors.entry(step).or_default() += 1;
            }
        }
        _ => {}
    }
}

/// Connects `users` through the registry, 100 at a time; each connection's frames go to its
/// callback from a reader task. Returns `(user, server id, sender)` in order.
async fn connect_all<F, C>(
    args: &Args,
    users: Vec<String>,
    callback: F,
) -> Result<Vec<(String, String, FrameSender)>>
where
    F: Fn(usize) -> C,
    C: FnMut(ServerFrame) + Send + 'static,
{
    let api = api(args);
    let indexed: Vec<(usize, String)> = users.into_iter().enumerate().collect();
    let results = bounded(indexed, 100, |(i, user)| {
        let api = api.clone();
        let cb = callback(i);
        async move {
            let token = token(&api, args, &user).await?;
            let connection = api.connect(&token).await?;
            let server = connection.server_id().to_owned();
            let (sender, receiver) = connection.split();
            receiver.spawn(cb);
            Ok::<_, anyhow::Error>((user, server, sender))
        }
    })
    .await;
    results.into_iter().collect()
}

/// `owner`'s direct conversation with `other`.
async fn create_direct(api: &Api, args: &Args, owner: &str, other: &str) -> Result<String> {
    let token = token(api, args, owner).await?;
    Ok(api.as_user(&token).create_direct(other).await?.id)
}

/// A group of `owner` and `members`.
async fn create_group(
    api: &Api,
    args: &Args,
    owner: &str,
    name: &str,
    members: &[String],
) -> Result<String> {
    let token = token(api, args, owner).await?;
    Ok(api
        .as_user(&token)
        .create_group(name, members.iter().cloned())
        .await?
        .id)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// S1: idle connections and the servers' memory per connection.
pub async fn idle(args: &Args) -> Result<serde_json::Value> {
    let count = if args.clients == 0 {
        3000
    } else {
        args.clients
    };
    let before: Vec<u64> = args.server_pids.iter().map(|p| rss_kib(*p)).collect();
    let started = Instant::now();
    let users = (0..count).map(|i| format!("idle{i}")).collect();
    let connections = connect_all(args, users, |_| |_| {}).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<u64> = args.server_pids.iter().map(|p| rss_kib(*p)).collect();
    let grown: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let mut per_server: BTreeMap<String, usize> = BTreeMap::new();
    for (_, server, _) in &connections {
        *per_server.entry(server.clone()).or_default() += 1;
    }
    drop(connections);
    Ok(json!({
        "scenario": "s1_idle",
        "connections": count,
        "connect_seconds": connect_secs,
        "per_server": per_server,
        "rss_kib_before": before,
        "rss_kib_after": after,
        "kib_per_connection": grown as f64 / count as f64,
    }))
}

/// One sending plan: a writer, its conversation, and where acks land.
struct Sender {
    writer: FrameSender,
    conversation: String,
}

/// Runs one rate step: every sender sends `per_sender` msgs/s for the duration, spread.
async fn run_step(
    senders: Vec<Sender>,
    step: u32,
    per_sender_rate: f64,
    duration: Duration,
) -> (Vec<Sender>, u64) {
    let count = (per_sender_rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / per_sender_rate);
    let n = senders.len().max(1);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            // Spread the senders' phases over one interval.
            let offset = interval.mul_f64(i as f64 / n as f64);
            tokio::spawn(async move {
                let mut attempted = 0;
                for k in 0..count {
                    tokio::time::sleep_until(start + offset + interval.mul_f64(k as f64)).await;
                    let client_msg_id = format!("{step}-{k}");
                    let body = format!("{step}:{}", now_us());
                    let sent = s
                        .writer
                        .send_message(&s.conversation, &client_msg_id, &body)
                        .await;
                    if sent.is_err() {
                        break;
                    }
                    attempted += 1;
                }
                (s, attempted)
            })
        })
        .collect();
    let mut back = Vec::new();
    let mut attempted = 0;
    for t in tasks {
        if let Ok((s, a)) = t.await {
            back.push(s);
            attempted += a;
        }
    }
    (back, attempted)
}

/// Checks one step: every acknowledged seq of each conversation reached each of its
/// receivers exactly once, in order.
struct StepCheck {
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    received: u64,
    latencies: Vec<u64>,
}

fn check(acked: &HashSet<u64>, seen: &[(u64, u64)], out: &mut StepCheck) {
    let mut distinct = HashSet::new();
    let mut last = 0;
    for (seq, latency) in seen {
        if !distinct.insert(*seq) {
            out.duplicates += 1;
            continue;
        }
        if *seq < last {
            out.out_of_order += 1;
        }
        last = last.max(*seq);
        out.received += 1;
        out.latencies.push(*latency);
    }
    out.lost += acked.iter().filter(|s| !distinct.contains(s)).count() as u64;
}

#[allow(clippy::too_many_arguments)]
async fn stepped(
    scenario: &str,
    rates: &[f64],
    duration: Duration,
    mut senders: Vec<Sender>,
    sender_logs: Vec<Arc<Mutex<SenderLog>>>,
    // For each sender, its receivers' logs.
    receivers: Vec<Vec<ReceiverLog>>,
    extra: serde_json::Value,
) -> Result<serde_json::Value> {
    // Warm-up (step 0, not reported): one message per sender, so first-message costs
    // (sequence counters, membership caches, connection pools) stay out of the figures. The
    // Socket.IO peer warms up too.
    let (back, attempted) = run_step(senders, 0, 1.0, Duration::from_secs(1)).await;
    senders = back;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let acked: u64 = sender_logs
            .iter()
            .map(|l| {
                l.lock()
                    .unwrap()
                    .acked
                    .iter()
                    .filter(|(s, _)| *s == 0)
                    .count() as u64
            })
            .sum();
        if acked >= attempted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut steps = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        let step = i as u32 + 1;
        let per_sender = rate / senders.len() as f64;
        let started = Instant::now();
        let (back, attempted) = run_step(senders, step, per_sender, duration).await;
        senders = back;
        let send_secs = started.elapsed().as_secs_f64();
        // Drain: wait for acks of everything attempted, then a moment for deliveries.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered: u64 = sender_logs
                .iter()
                .map(|l| {
                    let l = l.lock().unwrap();
                    l.acked.iter().filter(|(s, _)| *s == step).count() as u64
                        + l.errors.get(&step).copied().unwrap_or(0)
                })
                .sum();
            if answered >= attempted || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut result = StepCheck {
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            received: 0,
            latencies: Vec::new(),
        };
        let mut acked_total = 0;
        let mut errors = 0;
        let mut expected = 0;
        for (log, outs) in sender_logs.iter().zip(&receivers) {
            let log = log.lock().unwrap();
            let acked: HashSet<u64> = log
                .acked
                .iter()
                .filter(|(s, _)| *s == step)
                .map(|(_, q)| *q)
                .collect();
            acked_total += acked.len() as u64;
            errors += log.errors.get(&step).copied().unwrap_or(0);
            for receiver in outs {
                expected += acked.len() as u64;
                let seen: Vec<(u64, u64)> = receiver
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(s, _, _)| *s == step)
                    .map(|(_, q, l)| (*q, *l))
                    .collect();
                check(&acked, &seen, &mut result);
            }
        }
        let latency = percentiles(&mut result.latencies);
        let pass = result.lost == 0
            && result.duplicates == 0
            && result.out_of_order == 0
            && errors == 0
            && p99_ms(&latency) < 250.0;
        eprintln!(
            "{scenario} step {step}: target {rate}/s, acked {acked_total}/{attempted}, errors {errors}, delivered {}/{expected}, lost {}, dup {}, ooo {}, p99 {:?} ms, pass {pass}",
            result.received, result.lost, result.duplicates, result.out_of_order, latency["p99_ms"]
        );
        steps.push(json!({
            "target_rate": rate,
            "attempted": attempted,
            "acknowledged": acked_total,
            "errors": errors,
            "achieved_send_rate": attempted as f64 / send_secs,
            "expected_deliveries": expected,
            "deliveries": result.received,
            "deliveries_per_sec": result.received as f64 / duration.as_secs_f64(),
            "lost": result.lost,
            "duplicates": result.duplicates,
            "out_of_order": result.out_of_order,
            "latency": latency,
            "pass": pass,
        }));
        if !pass && p99_ms(&steps.last().unwrap()["latency"]) > 2000.0 {
            eprintln!("{scenario}: stopping the ladder, the system is saturated");
            break;
        }
    }
    let mut out = json!({ "scenario": scenario, "steps": steps });
    if let (Some(o), Some(e)) = (out.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    Ok(out)
}

/// Connects `clients` users named `prefix{i}`; each records the messages it receives and the
/// acks of what it sends (any client may be a sender or a receiver).
#[allow(clippy::type_complexity)]
async fn connect_chatters(
    args: &Args,
    prefix: &str,
    clients: usize,
) -> Result<(
    Vec<(String, String, FrameSender)>,
    Vec<ReceiverLog>,
    Vec<Arc<Mutex<SenderLog>>>,
)> {
    let receiver_logs: Vec<ReceiverLog> = (0..clients).map(|_| Arc::default()).collect();
    let sender_logs: Vec<Arc<Mutex<SenderLog>>> = (0..clients).map(|_| Arc::default()).collect();
    let (rl, sl) = (receiver_logs.clone(), sender_logs.clone());
    let users: Vec<String> = (0..clients).map(|i| format!("{prefix}{i}")).collect();
    let connected = connect_all(args, users, move |i| {
        let mut on_message = receiver_callback(rl[i].clone());
        let mut on_ack = sender_callback(sl[i].clone());
        move |frame: ServerFrame| {
            if matches!(frame, ServerFrame::Message { .. }) {
                on_message(frame);
            } else {
                on_ack(frame);
            }
        }
    })
    .await?;
    Ok((connected, receiver_logs, sender_logs))
}

/// S2: pairs, the receiver on another server than the sender.
pub async fn one_to_one(args: &Args) -> Result<serde_json::Value> {
    let clients = if args.clients == 0 {
        2000
    } else {
        args.clients
    };
    let pairs = clients / 2;
    let rates = if args.rates.is_empty() {
        vec![2000.0, 5000.0, 10000.0, 20000.0]
    } else {
        args.rates.clone()
    };
    let (connected, receiver_logs, sender_logs) = connect_chatters(args, "pair", clients).await?;
    // Sort by server; pair i with i + pairs, which is on another server whenever no server
    // holds more than half of the clients.
    let mut order: Vec<usize> = (0..clients).collect();
    order.sort_by(|a, b| connected[*a].1.cmp(&connected[*b].1));
    let api = api(args);
    let plan: Vec<(usize, usize)> = (0..pairs).map(|i| (order[i], order[i + pairs])).collect();
    let cross = plan
        .iter()
        .filter(|(s, r)| connected[*s].1 != connected[*r].1)
        .count();
    let conversations = bounded(plan.clone(), 32, |(s, r)| {
        let api = api.clone();
        let (sender, receiver) = (connected[s].0.clone(), connected[r].0.clone());
        async move { create_direct(&api, args, &sender, &receiver).await }
    })
    .await
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let mut writers: Vec<Option<FrameSender>> =
        connected.into_iter().map(|(_, _, w)| Some(w)).collect();
    let mut senders = Vec::new();
    let mut logs = Vec::new();
    let mut outs = Vec::new();
    for ((s, r), conversation) in plan.iter().zip(conversations) {
        senders.push(Sender {
            writer: writers[*s].take().unwrap(),
            conversation,
        });
        logs.push(sender_logs[*s].clone());
        outs.push(vec![receiver_logs[*r].clone()]);
    }
    stepped(
        "s2_1to1",
        &rates,
        args.duration,
        senders,
        logs,
        outs,
        json!({"clients": clients, "pairs": pairs, "cross_server_pairs": cross}),
    )
    .await
}

/// S3: groups of 100, one sender each.
pub async fn groups(args: &Args) -> Result<serde_json::Value> {
    let clients = if args.clients == 0 {
        1000
    } else {
        args.clients
    };
    let group_size = 100.min(clients);
    let groups = clients / group_size;
    let rates = if args.rates.is_empty() {
        vec![50.0, 100.0, 200.0, 400.0]
    } else {
        args.rates.clone()
    };
    let (connected, receiver_logs, sender_logs) = connect_chatters(args, "grp", clients).await?;
    let api = api(args);
    let mut writers: Vec<Option<FrameSender>> = Vec::new();
    let mut names = Vec::new();
    for (user, _, writer) in connected {
        names.push(user);
        writers.push(Some(writer));
    }
    let mut senders = Vec::new();
    let mut logs = Vec::new();
    let mut outs = Vec::new();
    for g in 0..groups {
        let members: Vec<String> = names[g * group_size + 1..(g + 1) * group_size].to_vec();
        let owner = &names[g * group_size];
        let conversation = create_group(&api, args, owner, &format!("load-{g}"), &members).await?;
        senders.push(Sender {
            writer: writers[g * group_size].take().unwrap(),
            conversation,
        });
        logs.push(sender_logs[g * group_size].clone());
        outs.push(
            (g * group_size + 1..(g + 1) * group_size)
                .map(|i| receiver_logs[i].clone())
                .collect(),
        );
    }
    stepped(
        "s3_group",
        &rates,
        args.duration,
        senders,
        logs,
        outs,
        json!({"clients": clients, "groups": groups, "group_size": group_size}),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_counts_loss_duplicates_and_reordering() {
        let acked: HashSet<u64> = [1, 2, 3, 4].into_iter().collect();
        let mut out = StepCheck {
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            received: 0,
            latencies: Vec::new(),
        };
        check(&acked, &[(1, 10), (3, 10), (2, 10), (3, 10)], &mut out);
        assert_eq!(out.lost, 1, "4 never arrived");
        assert_eq!(out.duplicates, 1, "3 twice");
        assert_eq!(out.out_of_order, 1, "2 after 3");
        assert_eq!(out.received, 3);
    }

    #[test]
    fn step_is_read_from_ids_and_bodies() {
        assert_eq!(step_of("3-17"), Some(3));
        assert_eq!(step_of("12:99"), Some(12));
        assert_eq!(step_of("x"), None);
    }
}
