//! Seed 000's dice game on the cluster's own primitives.
//!
//! Every round, each player rolls 1-100 and broadcasts the roll through the
//! log (a kv row `dice/<game>/<round>/<player>`). Each player follows the
//! round's topic on the change feed until every roll is in; all see the
//! same rolls, so all agree on the winner (highest roll, ties to the smaller
//! player). The winner takes the mutex and writes the round's result record
//! with a create-if-absent (a retried write cannot write it twice), with its
//! fencing token; then everyone passes a barrier before the next round.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use futures::StreamExt;
use rand::Rng;
use storage_node::client::{ClientError, FeedItem, LamportSite, ShardClient};
use storage_node::{Command, CommandResult, Rejection, RowKey, RowWrite};

/// Deadline of one write.
const WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// One round as one player saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundView {
    /// The round, from 1.
    pub round: u32,
    /// Every player's roll.
    pub rolls: BTreeMap<u64, u64>,
    /// The player this view belongs to decided this winner.
    pub winner: u64,
    /// The fencing token of the winner's grant, if this player won.
    pub token: Option<u64>,
}

/// Plays `rounds` rounds with `players` players (ids 1..=players) as tasks
/// of this process, each with its own Lamport site. Returns each player's
/// views, by player.
pub async fn play(
    shard: Arc<ShardClient>,
    game: &str,
    players: u64,
    rounds: u32,
) -> Result<BTreeMap<u64, Vec<RoundView>>, ClientError> {
    let tasks: Vec<_> = (1..=players)
        .map(|player| {
            let (shard, game) = (shard.clone(), game.to_owned());
            tokio::spawn(async move { player_loop(shard, game, player, players, rounds).await })
        })
        .collect();
    let mut views = BTreeMap::new();
    for (player, task) in (1..=players).zip(tasks) {
        let result = task
            .await
            .map_err(|e| ClientError::Protocol { node: 0, detail: format!("player {player} panicked: {e}") })?;
        views.insert(player, result?);
    }
    Ok(views)
}

async fn player_loop(
    shard: Arc<ShardClient>,
    game: String,
    player: u64,
    players: u64,
    rounds: u32,
) -> Result<Vec<RoundView>, ClientError> {
    let site = LamportSite::new(shard.clone(), player);
    let mut views = Vec::new();
    for round in 1..=rounds {
        let roll = rand::thread_rng().gen_range(1..=100u64);
        let key = RowKey::Kv(format!("dice/{game}/{round}/{player}"));
        shard.write(&Command::single(RowWrite::upsert(key, roll.to_string())), WRITE_DEADLINE).await?;
        let rolls = collect_rolls(&shard, &game, round, players).await?;
        let winner = *rolls.iter().max_by_key(|(p, r)| (**r, std::cmp::Reverse(**p))).expect("rolls").0;
        let mut token = None;
        if winner == player {
            let grant = site.acquire(&format!("dice/{game}")).await?;
            let record = format!("round {round}: player {player} wins with {} (token {})", rolls[&player], grant.token);
            let result = RowKey::Kv(format!("dice/{game}/results/{round}"));
            match shard.write(&Command::single(RowWrite::create(result, record)), WRITE_DEADLINE).await? {
                CommandResult::Applied { .. } | CommandResult::Rejected(Rejection::AlreadyExists(_)) => {}
                other => return Err(ClientError::Protocol { node: 0, detail: format!("result write: {other:?}") }),
            }
            site.release(&format!("dice/{game}")).await?;
            token = Some(grant.token);
        }
        shard.barrier(&format!("dice/{game}"), player, players as u32, u64::from(round - 1)).await?;
        views.push(RoundView { round, rolls, winner, token });
    }
    Ok(views)
}

/// Follows the round's rolls on the feed until all `players` are in.
async fn collect_rolls(
    shard: &ShardClient,
    game: &str,
    round: u32,
    players: u64,
) -> Result<BTreeMap<u64, u64>, ClientError> {
    let prefix = format!("kv/dice/{game}/{round}");
    let mut feed = Box::pin(shard.watch(&prefix, None));
    let mut rolls = BTreeMap::new();
    while let Some(item) = feed.next().await {
        if let FeedItem::Event { topic, value: Some(value), .. } = item? {
            let player = topic.rsplit('/').next().and_then(|p| p.parse().ok());
            let roll = std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok());
            if let (Some(player), Some(roll)) = (player, roll) {
                rolls.insert(player, roll);
            }
        }
        if rolls.len() as u64 >= players {
            return Ok(rolls);
        }
    }
    Err(ClientError::Protocol { node: 0, detail: "the change feed ended".into() })
}

/// The game as a table: one line per round, from player 1's view, with the
/// result records as stored.
pub fn render(views: &BTreeMap<u64, Vec<RoundView>>, results: &BTreeMap<u32, String>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<6} {:<40} {:<7} {:<6} result record", "round", "rolls (player: roll)", "winner", "token");
    let Some(first) = views.values().next() else { return out };
    for view in first {
        let rolls: Vec<String> = view.rolls.iter().map(|(p, r)| format!("{p}:{r}")).collect();
        let token = views.values().find_map(|v| v.iter().find(|r| r.round == view.round).and_then(|r| r.token));
        let token = token.map_or("-".into(), |t| t.to_string());
        let record = results.get(&view.round).cloned().unwrap_or_else(|| "(missing)".into());
        let _ = writeln!(out, "{:<6} {:<40} {:<7} {:<6} {}", view.round, rolls.join(" "), view.winner, token, record);
    }
    out
}
