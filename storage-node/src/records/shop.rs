//! The e-commerce records stored in the shop tables.
//!
//! Rows hold these records bincode-encoded. The state machine reads a
//! product's `quantity` to move stock atomically with an order, and an
//! order's lines to know what it holds; everything else (a client's
//! document, a product's extra fields) is carried as the caller's JSON text.
//!
//! A product's row may carry one more number after its record: how many
//! order lines hold the product ([`ProductRow`]), which the storage node
//! keeps from layout 4 on (`crate::state::layout::ORDER_COUNTS`) and no
//! caller sets. Whoever decodes the row as a [`ProductRecord`] does not see
//! it: a record decodes from the front of its bytes.

use serde::{Deserialize, Serialize};

/// A client: the caller's JSON object, kept as given (normalized).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client's JSON object, e.g. `{"CID":"7","name":"Ana"}`.
    pub document: String,
}

/// A product with its price and stock. A field added here would be read
/// from the bytes of [`ProductRow`]'s count: a new field needs a new row
/// format (and a layout, `crate::state::layout`).
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

/// A product's row as the storage node reads and writes it: the record,
/// then the number of order lines that hold the product, as a
/// little-endian `u64` after the record's bytes when it is above 0. A row
/// without it (every row before layout 4, and any product no order holds)
/// counts 0, and so do bytes after the record that are not exactly 8.
/// Nodes have refused records with bytes after them since layout 4, and
/// `apply` writes a product's new record without them from layout 4 on;
/// a row a raw `Store` client wrote before that with exactly 8 such bytes
/// reads them as a count. The count assumes what portals guarantee: each
/// line's index entry is put once when the line appears and deleted once
/// when it goes.
#[derive(Clone, Debug, PartialEq)]
pub struct ProductRow {
    /// What callers see.
    pub record: ProductRecord,
    /// Order lines that hold the product, counted from layout 4 on.
    pub orders: u64,
}

impl ProductRow {
    /// Decodes a product's row.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (record, after) = Self::split(bytes)?;
        let orders = <[u8; 8]>::try_from(after).map_or(0, u64::from_le_bytes);
        Ok(ProductRow { record, orders })
    }

    /// The record at the front of `bytes`, and the bytes after it.
    pub fn split(bytes: &[u8]) -> Result<(ProductRecord, &[u8]), String> {
        let record: ProductRecord = decode_record(bytes)?;
        let after = bytes.get(crate::codec::encoded_len(&record)..).unwrap_or_default();
        Ok((record, after))
    }

    /// The row's bytes: the record's alone when no order holds it.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = encode_record(&self.record);
        if self.orders > 0 {
            bytes.extend_from_slice(&self.orders.to_le_bytes());
        }
        bytes
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_row_keeps_its_order_count_out_of_the_record() {
        let record = ProductRecord { name: "pen".into(), price: 2.5, quantity: 7, extra: "{}".into() };
        let plain = encode_record(&record);
        assert_eq!(ProductRow::decode(&plain).unwrap(), ProductRow { record: record.clone(), orders: 0 });
        assert_eq!(ProductRow { record: record.clone(), orders: 0 }.encode(), plain, "no count, no bytes for it");
        let counted = ProductRow { record: record.clone(), orders: 3 };
        let bytes = counted.encode();
        assert_eq!(bytes.len(), plain.len() + 8);
        assert_eq!(ProductRow::decode(&bytes).unwrap(), counted);
        // Readers of the record (portals, the feed, older builds) see the
        // record alone.
        assert_eq!(decode_record::<ProductRecord>(&bytes).unwrap(), record);
        // Other trailing bytes were always ignored, and count nothing.
        let mut odd = plain.clone();
        odd.extend_from_slice(&[1, 2, 3]);
        assert_eq!(ProductRow::decode(&odd).unwrap().orders, 0);
        assert!(ProductRow::decode(&plain[..plain.len() - 1]).is_err(), "a cut record is corrupt");
    }
}
