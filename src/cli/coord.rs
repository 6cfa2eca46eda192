//! Commands around the coordination primitives: `lock`, `watch`, `topics`
//! and `demo`.
//!
//! A mutex named N lives in the shard of N's hash; a `lock acquire` process
//! is one Lamport site, keeps its session alive while it runs, and releases
//! on Ctrl-C or SIGTERM (SIGKILL it, and the session lapses: the next site
//! is granted the mutex after at most the session's lifetime). `watch`
//! prints the change feed of both shards as JSON lines.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use raftshop::demo::{dice, lamport};
use serde_json::json;
use storage_node::client::{ClusterClient, LamportSite};
use storage_node::records::coordination::MutexState;
use storage_node::records::shop::decode_record;
use storage_node::{ClusterConfig, RowKey, Shard};

use super::args::{DemoCommand, LockArgs, LockCommand, TopicsArgs, WatchArgs};

/// Deadline of one read or write.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

fn load(config: Option<&std::path::Path>) -> anyhow::Result<ClusterConfig> {
    Ok(ClusterConfig::load_or_default(config)?.0)
}

/// Runs `raftshop lock ...`.
pub async fn lock(args: LockArgs) -> anyhow::Result<ExitCode> {
    let config = load(args.config.as_deref())?;
    let cluster = ClusterClient::new(&config);
    match args.command {
        LockCommand::Acquire { name, site } => {
            let shard = Arc::new(storage_node::client::ShardClient::new(&config, Shard::of_key(&name)));
            let lamport = LamportSite::new(shard, site);
            let grant = lamport.acquire(&name).await.context("acquiring the mutex")?;
            println!(
                "{}",
                json!({"mutex": name, "site": site, "granted": true, "token": grant.token, "clock": grant.clock})
            );
            storage_node::cli::shutdown_signal().await;
            lamport.release(&name).await.context("releasing the mutex")?;
            println!("{}", json!({"mutex": name, "site": site, "released": true}));
        }
        LockCommand::Release { name, site } => {
            let shard = Arc::new(storage_node::client::ShardClient::new(&config, Shard::of_key(&name)));
            let state = LamportSite::new(shard, site).release(&name).await?;
            println!(
                "{}",
                portals::feed::render(&format!("locks/{name}"), &storage_node::records::shop::encode_record(&state))
            );
        }
        LockCommand::Status { name } => {
            let row = cluster.get(&RowKey::Mutex(name.clone()), DEADLINE).await?;
            let state: MutexState = match row {
                Some(row) => decode_record(&row.value).map_err(anyhow::Error::msg)?,
                None => MutexState::default(),
            };
            println!(
                "{}",
                portals::feed::render(&format!("locks/{name}"), &storage_node::records::shop::encode_record(&state))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `raftshop watch PREFIX`: JSON lines until interrupted.
pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let cluster = ClusterClient::new(&load(args.config.as_deref())?);
    let mut feed = Box::pin(portals::feed::merged(&cluster, &args.prefix));
    let stop = storage_node::cli::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            item = feed.next() => match item {
                Some(Ok(event)) => {
                    let value: serde_json::Value = serde_json::from_str(&event.json).unwrap_or(serde_json::Value::Null);
                    let line = json!({"shard": event.shard, "index": event.index, "topic": event.topic,
                        "value": value, "deleted": event.deleted, "current": event.current});
                    println!("{line}");
                }
                Some(Err(status)) => anyhow::bail!("the feed failed: {}", status.message()),
                None => return Ok(ExitCode::SUCCESS),
            },
        }
    }
}

/// Runs `raftshop topics [PREFIX]`.
pub async fn topics(args: TopicsArgs) -> anyhow::Result<ExitCode> {
    let cluster = ClusterClient::new(&load(args.config.as_deref())?);
    let mut counts = std::collections::BTreeMap::new();
    for shard in Shard::ALL {
        for (topic, count) in cluster.shard(shard).list_topics(&args.prefix, DEADLINE).await? {
            *counts.entry(topic).or_insert(0u64) += count;
        }
    }
    for (topic, count) in counts {
        println!("{topic:<24} {count}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `raftshop demo ...`.
pub async fn demo(command: DemoCommand) -> anyhow::Result<ExitCode> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match command {
        DemoCommand::Lamport { config } => {
            let resource = format!("seed-001-{stamp}");
            let shard =
                Arc::new(storage_node::client::ShardClient::new(&load(config.as_deref())?, Shard::of_key(&resource)));
            println!("Lamport's mutual exclusion, seed 001's three examples, on mutex {resource}:\n");
            let steps = lamport::replay(shard, &resource).await?;
            print!("{}", lamport::render(&steps));
        }
        DemoCommand::Dice { players, rounds, config } => {
            let game = format!("game-{stamp}");
            let shard =
                Arc::new(storage_node::client::ShardClient::new(&load(config.as_deref())?, Shard::of_key(&game)));
            println!("The dice game of seed 000: {players} players, {rounds} rounds (game {game})\n");
            let views = dice::play(shard.clone(), &game, players, rounds).await?;
            let mut results = std::collections::BTreeMap::new();
            for round in 1..=rounds {
                if let Some(row) = shard.get(&RowKey::Kv(format!("dice/{game}/results/{round}")), DEADLINE).await? {
                    results.insert(round, String::from_utf8_lossy(&row.value).into_owned());
                }
            }
            print!("{}", dice::render(&views, &results));
            let agree = views.values().all(|v| v.iter().map(|r| r.winner).eq(views[&1].iter().map(|r| r.winner)));
            println!("\nall {players} players agree on every winner: {agree}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
