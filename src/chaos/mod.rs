//! The chaos suite: faults injected into a real local cluster under load,
//! and checkers that judge what clients saw.
//!
//! - [`proxy`]: TCP link proxies that cut or slow node-to-node links.

pub mod proxy;
