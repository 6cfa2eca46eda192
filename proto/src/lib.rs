//! gRPC messages and services of raftshop.
//!
//! - [`api`]: the seed's e-commerce API, package-less (`/AdminPortal/...`).
//! - [`project`]: the same API under the course spec's `project` package.
//! - [`store`]: the storage node's `Raft` and `Store` services.
//! - [`feed`]: the portals' merged change feed.
//! - [`etcd`]: the part of etcd's KV API the benchmark uses.
//!
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC reflection, so `grpcurl list` works.

#![allow(clippy::all, missing_docs)]

/// The seed's API, served as `/AdminPortal/...` and `/OrderPortal/...`.
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The same API as `/project.AdminPortal/...` and `/project.OrderPortal/...`.
pub mod project {
    include!(concat!(env!("OUT_DIR"), "/project.rs"));
}

/// The storage node's services.
pub mod store {
    include!(concat!(env!("OUT_DIR"), "/raftshop.store.rs"));
}

/// The portals' merged change feed.
pub mod feed {
    include!(concat!(env!("OUT_DIR"), "/raftshop.feed.rs"));
}

/// The subset of etcd's v3 KV API the benchmark compares against.
pub mod etcd {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// Encoded descriptors of every service above, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/raftshop_descriptor.bin"));
