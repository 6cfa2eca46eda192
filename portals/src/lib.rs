//! The stateless portals: AdminPortal and OrderPortal.
//!
//! A portal speaks the seed's gRPC API (under both the package-less and the
//! `project.` service names, [`server`]) and keeps no data. Each handler
//! ([`service`]) parses the request ([`request`]), calls the [`shop::Shop`]
//! (clients and products in [`shop`], orders in [`orders`], a client's
//! order list in [`listing`]), and encodes the answer. The shop plans each call from fresh linearizable
//! reads and runs it as one atomic command on the shard that owns the rows,
//! or as a two-phase commit across both shards ([`txn`]), routing every
//! command to the owning shard's leader (an entity lives in the shard of its
//! own ID's parity). Any number of portal processes can run side by side:
//! they share nothing but the storage cluster.
//!
//! At the edge, a portal bounds what it takes and what it holds: every input
//! within [`storage_node::limits`] ([`request`]), at most
//! [`service::MAX_CALLS_IN_FLIGHT`] calls at once (more are shed with a 503
//! at once), writes made safe to retry by an idempotency key
//! ([`idempotency`]), replies of bounded size ([`orders`], [`listing`]),
//! and a health service that says NOT_SERVING while a shard has no
//! reachable leader ([`health`]).
//!
//! Beside the seed's API, each portal serves the shop's change feed merged
//! from both shards ([`feed`], the `raftshop.feed.Feed` service), and the
//! admin portal a read-only web console of the cluster ([`console`]). Every
//! call carries a request id into the nodes' logs ([`request_ids`]).

// tonic's `Status` is large, and the gRPC traits dictate it as error type.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod cli;
pub mod console;
pub mod feed;
pub mod health;
pub mod idempotency;
pub mod listing;
pub mod metrics;
pub mod orders;
pub mod request;
pub mod request_ids;
pub mod server;
pub mod service;
pub mod shop;
pub mod txn;
