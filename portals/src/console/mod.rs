//! The web console: a read-only page, served by the admin portal, that shows
//! the cluster as it is now.
//!
//! The admin portal serves it over plain HTTP/1 ([`web`]) at `console`
//! under `[portals]` in `cluster.toml` (or `--console`): the page's three
//! files, compiled in ([`assets`]), and a JSON API that the page polls
//! every second. Only `GET` is served; every error is `{"error": "..."}`.
//! [`Console::answer`] ([`api`]) routes each request:
//!
//! | path | what | from |
//! |---|---|---|
//! | `/api/cluster` | each shard's members: role, term, leader, log positions, lag | [`cluster`] |
//! | `/api/metrics` | each portal method's cumulative calls and latency | [`calls`] |
//! | `/api/transactions` | open transactions, by the intents they hold | [`transactions`] |
//! | `/api/events` | the last leader changes and nodes going silent or coming back | [`events`] |
//! | `/api/search?kind=client\|product\|order&id=N` | one row, by the portals' read path | [`search`] |
//!
//! One background task ([`events::watch_cluster`]) asks every node for its status
//! once a second; `/api/cluster` answers its latest snapshot, so any number
//! of open pages cost the cluster the same six status calls a second, and
//! the snapshots are compared to record events. The other endpoints read
//! when asked, each within a short deadline, so a shard without a leader
//! makes its part of an answer an error rather than a hang.

pub mod api;
pub mod assets;
pub mod calls;
pub mod cluster;
pub mod events;
pub mod search;
pub mod transactions;
pub mod web;

pub(crate) use api::AbortOnDrop;
pub use api::{now_ms, Console};
