//! What the tables hold, as records every process decodes alike.
//!
//! - [`shop`]: the e-commerce records (clients, products, orders) of the
//!   shop tables, read by the state machine's checks and by the portals.
//! - [`coordination`]: the records of the coordination primitives (Lamport
//!   mutexes, barriers, client sessions) and of change-feed events.
//!
//! The rules that change them live in [`crate::state`].

pub mod coordination;
pub mod shop;
