//! Notable things the console saw happen: leader changes and nodes that
//! stopped or started answering.
//!
//! The console observes the cluster once a second ([`watch_cluster`]); each new
//! [`ClusterView`] is compared with the one before ([`changes`], pure), and
//! what changed goes into an [`EventLog`], a ring of the last
//! [`EVENTS_KEPT`] events in memory. Nothing is persisted: the log covers
//! what this console process saw, from its start. Each event has a
//! sequence number, so a page can tell new ones from ones it has shown.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use storage_node::client::ClusterClient;
use storage_node::config::ClusterConfig;
use storage_node::{NodeId, Shard};
use tokio::sync::watch;

use super::cluster::{self, ClusterView};

/// Events kept; older ones are forgotten.
pub const EVENTS_KEPT: usize = 50;

/// How often the console observes the cluster.
pub const OBSERVE_INTERVAL: Duration = Duration::from_secs(1);

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// A shard's leader changed (`None`: no member says it leads).
    Leader {
        /// The shard.
        shard: Shard,
        /// The leader before, if there was one.
        from: Option<NodeId>,
        /// The leader now, if there is one.
        to: Option<NodeId>,
        /// The new leader's term.
        term: Option<u64>,
    },
    /// A node stopped answering `Status`.
    NodeDown {
        /// Its shard.
        shard: Shard,
        /// The node.
        node: NodeId,
        /// Why its call failed.
        error: String,
    },
    /// A node that did not answer answers again.
    NodeUp {
        /// Its shard.
        shard: Shard,
        /// The node.
        node: NodeId,
    },
}

impl Change {
    /// The change in one sentence.
    pub fn sentence(&self) -> String {
        let node = |id: &Option<NodeId>| id.map_or_else(|| "none".to_owned(), |id| format!("node {id}"));
        match self {
            Change::Leader { shard, from: None, to, term } => {
                format!("shard {shard}: leader {}{}", node(to), in_term(*term))
            }
            Change::Leader { shard, from, to, term } => {
                format!("shard {shard}: leader {} → {}{}", node(from), node(to), in_term(*term))
            }
            Change::NodeDown { shard, node, error } => {
                format!("node {node} (shard {shard}) stopped answering: {error}")
            }
            Change::NodeUp { shard, node } => format!("node {node} (shard {shard}) answers again"),
        }
    }
}

fn in_term(term: Option<u64>) -> String {
    term.map_or_else(String::new, |term| format!(" (term {term})"))
}

/// What changed from `before` to `now`. The first view (no `before`)
/// records each shard's leader and the nodes that do not answer.
pub fn changes(before: Option<&ClusterView>, now: &ClusterView) -> Vec<Change> {
    let mut changes = Vec::new();
    for shard in &now.shards {
        let was = before.and_then(|view| view.shard(shard.shard));
        for member in &shard.members {
            let answered = was.and_then(|s| s.members.iter().find(|m| m.id == member.id)).map(|m| m.answered);
            match (answered.unwrap_or(true), member.answered) {
                (true, false) => changes.push(Change::NodeDown {
                    shard: shard.shard,
                    node: member.id,
                    error: member.error.clone().unwrap_or_default(),
                }),
                (false, true) => changes.push(Change::NodeUp { shard: shard.shard, node: member.id }),
                _ => {}
            }
        }
        let leader_before = was.and_then(|s| s.leader);
        let new_leader = match was {
            None => shard.leader.is_some(),
            Some(was) => was.leader != shard.leader || (shard.leader.is_some() && was.term != shard.term),
        };
        if new_leader {
            changes.push(Change::Leader {
                shard: shard.shard,
                from: leader_before,
                to: shard.leader,
                term: shard.term,
            });
        }
    }
    changes
}

/// One event as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Its place in the console's sequence, from 1.
    pub seq: u64,
    /// When the console saw it, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The change in one sentence.
    pub text: String,
    /// The change.
    #[serde(flatten)]
    pub change: Change,
}

/// The last [`EVENTS_KEPT`] events, oldest first.
#[derive(Debug, Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<Event>,
    next_seq: u64,
}

impl EventLog {
    /// Records `changes` seen at `at_ms`, forgetting the oldest beyond
    /// [`EVENTS_KEPT`].
    pub fn record(&self, at_ms: u64, changes: Vec<Change>) {
        let mut ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for change in changes {
            ring.next_seq += 1;
            let event = Event { seq: ring.next_seq, at_ms, text: change.sentence(), change };
            tracing::info!(seq = event.seq, event = %event.text, "console event");
            ring.events.push_back(event);
            if ring.events.len() > EVENTS_KEPT {
                ring.events.pop_front();
            }
        }
    }

    /// The events kept, newest first.
    pub fn newest_first(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.events.iter().rev().cloned().collect()
    }
}

/// Observes the cluster every [`OBSERVE_INTERVAL`] forever, publishing each
/// view on `latest` and recording what changed in `events`.
pub async fn watch_cluster(
    config: ClusterConfig,
    cluster: Arc<ClusterClient>,
    latest: watch::Sender<Option<Arc<ClusterView>>>,
    events: Arc<EventLog>,
) {
    let mut ticks = tokio::time::interval(OBSERVE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before: Option<Arc<ClusterView>> = None;
    loop {
        ticks.tick().await;
        let now = Arc::new(cluster::observe(&config, &cluster).await);
        events.record(now.observed_at_ms, changes(before.as_deref(), &now));
        latest.send_replace(Some(now.clone()));
        before = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::super::cluster::tests::answer;
    use super::*;

    fn view(answers: Vec<cluster::Answer>) -> ClusterView {
        ClusterView::from_answers(0, answers)
    }

    fn healthy(even_leader: NodeId, term: u64) -> ClusterView {
        let role = |id| if id == even_leader { "leader" } else { "follower" };
        let mut answers: Vec<_> = (1..=3).map(|id| answer(id, Some((role(id), term, 9)))).collect();
        answers.extend([answer(4, Some(("leader", 1, 9))), answer(5, Some(("follower", 1, 9)))]);
        answers.push(answer(6, Some(("follower", 1, 9))));
        view(answers)
    }

    #[test]
    fn the_first_view_records_the_leaders_and_the_silent_nodes() {
        let first = view(vec![answer(1, Some(("leader", 2, 5))), answer(2, None), answer(4, None)]);
        let sentences: Vec<String> = changes(None, &first).iter().map(Change::sentence).collect();
        assert_eq!(
            sentences,
            [
                "node 2 (shard even) stopped answering: connection refused",
                "shard even: leader node 1 (term 2)",
                "node 4 (shard odd) stopped answering: connection refused",
            ]
        );
    }

    #[test]
    fn a_killed_leader_shows_as_a_silent_node_and_a_new_leader() {
        let before = healthy(2, 3);
        let mut answers: Vec<_> = vec![answer(1, Some(("leader", 4, 9))), answer(2, None)];
        answers.push(answer(3, Some(("follower", 4, 9))));
        answers.extend((4..=6).map(|id| answer(id, Some((if id == 4 { "leader" } else { "follower" }, 1, 9)))));
        let after = view(answers);
        let found = changes(Some(&before), &after);
        assert_eq!(
            found,
            [
                Change::NodeDown { shard: Shard::Even, node: 2, error: "connection refused".into() },
                Change::Leader { shard: Shard::Even, from: Some(2), to: Some(1), term: Some(4) },
            ]
        );
        assert_eq!(found[1].sentence(), "shard even: leader node 2 → node 1 (term 4)");
        assert!(changes(Some(&after), &after).is_empty(), "nothing changed");
        let back = changes(Some(&after), &healthy(1, 4));
        assert_eq!(back, [Change::NodeUp { shard: Shard::Even, node: 2 }]);
    }

    #[test]
    fn a_shard_losing_its_leader_and_a_re_election_of_the_same_node_are_changes() {
        let before = healthy(1, 2);
        let leaderless = view((1..=6).map(|id| answer(id, Some(("candidate", 3, 9)))).collect());
        let lost = changes(Some(&before), &leaderless);
        assert!(lost.contains(&Change::Leader { shard: Shard::Even, from: Some(1), to: None, term: None }), "{lost:?}");
        let again = changes(Some(&before), &healthy(1, 5));
        assert_eq!(again, [Change::Leader { shard: Shard::Even, from: Some(1), to: Some(1), term: Some(5) }]);
    }

    #[test]
    fn the_log_keeps_the_newest_events_with_growing_sequence_numbers() {
        let log = EventLog::default();
        for i in 0..(EVENTS_KEPT as u64 + 5) {
            log.record(i, vec![Change::NodeUp { shard: Shard::Odd, node: i }]);
        }
        let events = log.newest_first();
        assert_eq!(events.len(), EVENTS_KEPT);
        assert_eq!(events[0].seq, EVENTS_KEPT as u64 + 5, "newest first");
        assert_eq!(events.last().map(|e| e.seq), Some(6), "the five oldest were forgotten");
        let json = serde_json::to_value(&events[0]).expect("serializes");
        assert_eq!(json["kind"], "node-up");
        assert_eq!(json["shard"], "odd");
        assert_eq!(json["text"], format!("node {} (shard odd) answers again", EVENTS_KEPT + 4));
    }
}
