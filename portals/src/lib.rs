//! The stateless portals (work in progress).

pub mod shop;
pub mod txn;
