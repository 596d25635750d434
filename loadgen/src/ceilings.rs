//! Rate measurements: HTTP request rate (assign, or nginx's static page as the ceiling), the
//! WebSocket `ping`/`pong` echo rate, and the broker's produce-then-consume rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use switchboard_kafka::KafkaConfig;
use switchboard_protocol::frames::{ClientFrame, ServerFrame};

use crate::stats::percentiles;
use crate::util::{api, http_client, token};
use crate::Args;

/// `--concurrency` loops GET `path` for `--duration`.
pub async fn http_rate(args: &Args, path: &str) -> Result<serde_json::Value> {
    let http = http_client();
    let url = format!("{}{path}", args.base_url);
    let deadline = Instant::now() + args.duration;
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (http, url, errors) = (http.clone(), url.clone(), errors.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(started.elapsed().as_micros() as u64);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let ok = all.len();
    Ok(json!({
        "scenario": if path == "/" { "static_nginx" } else { "s4_assign" },
        "path": path,
        "concurrency": args.concurrency,
        "requests": ok,
        "errors": errors.load(Ordering::Relaxed),
        "requests_per_sec": ok as f64 / args.duration.as_secs_f64(),
        "latency": percentiles(&mut all),
    }))
}

/// `--clients` connections each doing `ping` -> `pong` round trips for `--duration`.
pub async fn ws_echo(args: &Args) -> Result<serde_json::Value> {
    let clients = if args.clients == 0 { 100 } else { args.clients };
    let api = api(args);
    let deadline = Instant::now() + args.duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let token = token(&api, args, &format!("echo{i}")).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (mut writer, reader) = api.connect(&token).await?.split();
        reader.spawn(move |f| {
            if matches!(f, ServerFrame::Pong) {
                let _ = tx.send(());
            }
        });
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                if writer.send(&ClientFrame::Ping).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                    Ok(Some(())) => latencies.push(started.elapsed().as_micros() as u64),
                    _ => break,
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let n = all.len();
    Ok(json!({
        "scenario": "ws_echo",
        "connections": clients,
        "round_trips": n,
        "round_trips_per_sec": n as f64 / args.duration.as_secs_f64(),
        "latency": percentiles(&mut all),
    }))
}

/// Produces `--clients` records (default 50,000) of ~200 bytes with the system's producer
/// settings to a fresh topic, then consumes them back.
pub async fn broker(args: &Args) -> Result<serde_json::Value> {
    let count = if args.clients == 0 {
        50_000
    } else {
        args.clients
    };
    let config = KafkaConfig {
        brokers: args.brokers.clone(),
        message_topic: String::new(),
        events_topic: String::new(),
        handler_topic_prefix: String::new(),
        linger_ms: 5,
        idempotence: false,
        replication_factor: 1,
        security: Default::default(),
    };
    let topic = format!("loadgen.ceiling.{}", chrono::Utc::now().timestamp_millis());
    let producer: FutureProducer = config.producer_config(30_000).create()?;
    // The system creates its topics explicitly (auto-creation is off in compose); so does this.
    let admin: AdminClient<DefaultClientContext> = config.producer_config(30_000).create()?;
    admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    let payload = "x".repeat(200);
    let started = Instant::now();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(10_000));
    let failures = Arc::new(Mutex::new(0u64));
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let permit = in_flight.clone().acquire_owned().await?;
        let key = format!("k{}", i % 64);
        let producer = producer.clone();
        let payload = payload.clone();
        let topic = topic.clone();
        let failures = failures.clone();
        handles.push(tokio::spawn(async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            if producer.send(record, Duration::from_secs(5)).await.is_err() {
                *failures.lock().unwrap() += 1;
            }
            drop(permit);
        }));
    }
    for h in handles {
        h.await?;
    }
    let produce_secs = started.elapsed().as_secs_f64();
    let consumer: StreamConsumer = config
        .consumer_config(&format!("{topic}.reader"), 10)
        .create()?;
    consumer.subscribe(&[&topic])?;
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < count {
        match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Ok(Ok(_)) => consumed += 1,
            _ => break,
        }
    }
    let consume_secs = started.elapsed().as_secs_f64();
    let failed = *failures.lock().unwrap();
    Ok(json!({
        "scenario": "broker_ceiling",
        "records": count,
        "produce_failures": failed,
        "produce_per_sec": (count as u64 - failed) as f64 / produce_secs,
        "consumed": consumed,
        "consume_per_sec": consumed as f64 / consume_secs,
    }))
}
