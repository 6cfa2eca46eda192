//! The e-commerce records stored in the shop tables.
//!
//! Rows hold these records bincode-encoded. The state machine reads a
//! product's `quantity` to move stock atomically with an order, and an
//! order's lines to know what it holds; everything else (a client's
//! document, a product's extra fields) is carried as the caller's JSON text.

use serde::{Deserialize, Serialize};

/// A client: the caller's JSON object, kept as given (normalized).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client's JSON object, e.g. `{"CID":"7","name":"Ana"}`.
    pub document: String,
}

/// A product with its price and stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductRecord {
    /// Display name.
    pub name: String,
    /// Unit price, >= 0; copied into an order line when ordered.
    pub price: f64,
    /// Units in stock, never negative.
    pub quantity: u64,
    /// Any other fields of the caller's JSON object, as a JSON object text.
    pub extra: String,
}

/// One product line of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product ordered.
    pub pid: u64,
    /// Units ordered, > 0.
    pub quantity: u64,
    /// Unit price at the moment the line was added.
    pub price: f64,
}

/// An order of one client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The client who placed it.
    pub cid: u64,
    /// Its lines, one per product, ordered by PID.
    pub lines: Vec<OrderLine>,
}

impl OrderRecord {
    /// The quantity of `pid` in this order, 0 if absent.
    pub fn quantity_of(&self, pid: u64) -> u64 {
        self.lines.iter().find(|l| l.pid == pid).map_or(0, |l| l.quantity)
    }
}

/// Encodes a record for a row.
pub fn encode_record<T: Serialize>(record: &T) -> Vec<u8> {
    crate::codec::encode(record)
}

/// Decodes a record from a row.
pub fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    crate::codec::decode_stored(bytes).map_err(|e| format!("corrupt record: {e}"))
}
