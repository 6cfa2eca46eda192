//! The stateless portals: AdminPortal and OrderPortal.
//!
//! A portal speaks the seed's gRPC API (under both the package-less and the
//! `project.` service names, [`server`]) and keeps no data. Each handler
//! ([`service`]) parses the request ([`request`]), calls the [`shop::Shop`],
//! and encodes the answer. The shop plans each call from fresh linearizable
//! reads and runs it as one atomic command on the shard that owns the rows,
//! or as a two-phase commit across both shards ([`txn`]), routing every
//! command to the owning shard's leader (an entity lives in the shard of its
//! own ID's parity). Any number of portal processes can run side by side:
//! they share nothing but the storage cluster.
//!
//! Beside the seed's API, each portal serves the shop's change feed merged
//! from both shards ([`feed`], the `raftshop.feed.Feed` service).

// tonic's `Status` is large, and the gRPC traits dictate it as error type.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod feed;
pub mod request;
pub mod server;
pub mod service;
pub mod shop;
pub mod txn;
