//! The one bincode codec: for bytes a node takes from the network, and
//! for what it stores (rows, the Raft log, snapshots; [`decode_stored`]).
//!
//! Commands, queries and Raft messages travel bincode-encoded inside gRPC
//! messages, and anyone who can reach a node's port can send any bytes.
//! Two things bound the work such bytes can cause:
//!
//! - **Size.** [`decode`] refuses input of more than [`MAX_COMMAND_BYTES`];
//!   [`decode_peer_message`] allows a peer's Raft message up to
//!   [`MAX_MESSAGE_BYTES`], since batched entries and snapshot chunks are
//!   bigger than any one command. Values are decoded from the byte slice
//!   itself, so a length prefix that claims more than the input holds is an
//!   error, not an allocation. (bincode enforces its `with_limit` only when
//!   reading from an `io::Read`; from a slice, the slice's length is the
//!   bound, which is why it is checked first.)
//! - **Depth.** Three wire types contain themselves: an intent's row key
//!   (`RowKey::Intent(Box<RowKey>)`), a batch of commands
//!   (`Command::Many(Vec<Command>)`) and a write sent once
//!   (`Command::Once { command: Box<Command>, .. }`). serde decodes them by
//!   recursion, so a few bytes per level could exhaust the thread's stack
//!   and kill the process. Those fields are decoded through [`nested`], which counts
//!   the levels entered on this thread and fails past [`MAX_NESTING`] while
//!   decoding — the check cannot come after, since the overflow happens
//!   during. It holds for every decoder (the Raft log's and the state's
//!   too) and wherever the types are embedded (a `Query`, a `TxnPart`, a
//!   `CommandResult`).
//!
//! The options ([`options`]) are those of plain `bincode::serialize` plus a
//! byte limit, so the wire format is unchanged: old and new nodes, clients
//! and logs read each other.

use std::cell::Cell;

use bincode::Options;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

use crate::limits::{MAX_COMMAND_BYTES, MAX_NESTING};
use crate::node::MAX_MESSAGE_BYTES;

thread_local! {
    /// Levels of self-containing wire types being decoded on this thread.
    static NESTING: Cell<usize> = const { Cell::new(0) };
}

/// bincode's legacy format (fixed-width integers, trailing bytes allowed,
/// as `bincode::serialize` writes) reading at most `limit` bytes.
pub fn options(limit: usize) -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes().with_limit(limit as u64)
}

/// Encodes a value for the wire or the log.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always encode")
}

/// Decodes a value this node stored itself (a row, a Raft log entry, a
/// snapshot's parts): bytes already bounded when they came in, so no
/// limit but the slice; a failure means corrupt data (`InvalidData`).
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> std::io::Result<T> {
    bincode::deserialize(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The encoded size of a value in bytes, without encoding it.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    bincode::serialized_size(value).map_or(usize::MAX, |len| usize::try_from(len).unwrap_or(usize::MAX))
}

/// Decodes a command, query or reply: at most [`MAX_COMMAND_BYTES`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_within(bytes, MAX_COMMAND_BYTES)
}

/// Decodes a node's answer to a `Store` call: at most
/// [`crate::limits::MAX_REPLY_BYTES`].
pub fn decode_reply<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_within(bytes, crate::limits::MAX_REPLY_BYTES)
}

/// Decodes a peer's Raft message: at most [`MAX_MESSAGE_BYTES`].
pub fn decode_peer_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_within(bytes, MAX_MESSAGE_BYTES)
}

/// Decodes a value from at most `limit` bytes.
fn decode_within<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, String> {
    if bytes.len() > limit {
        return Err(format!("{} bytes is more than the limit of {limit}", bytes.len()));
    }
    options(limit).deserialize(bytes).map_err(|e| e.to_string())
}

/// Decodes a field whose type contains itself, one nesting level deeper;
/// fails past [`MAX_NESTING`] levels. For `#[serde(deserialize_with)]`.
pub fn nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let _level = NestingLevel::enter().map_err(D::Error::custom)?;
    T::deserialize(deserializer)
}

/// One level of [`nested`] decoding on this thread; leaving it (returning,
/// failing or unwinding) gives the level back.
struct NestingLevel;

impl NestingLevel {
    /// Enters a level, unless that would pass [`MAX_NESTING`].
    fn enter() -> Result<Self, &'static str> {
        NESTING.with(|depth| {
            if depth.get() >= MAX_NESTING {
                return Err("nested deeper than MAX_NESTING");
            }
            depth.set(depth.get() + 1);
            Ok(NestingLevel)
        })
    }
}

impl Drop for NestingLevel {
    fn drop(&mut self) {
        NESTING.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandResult, Query, Rejection, RowKey, RowWrite};

    /// bincode's enum tag (a u32 variant index) of `RowKey::Intent`.
    const INTENT_TAG: u32 = 8;
    /// bincode's enum tag of `Command::Many`.
    const MANY_TAG: u32 = 9;
    /// A key whose encoding marks where [`with_deep_key`] splices.
    const MARKER: &str = "marker-key";

    /// The bytes of `Intent(Intent(... Kv("k") ...))` with `levels` intents,
    /// written by hand: building the value would itself recurse as deep.
    fn intent_chain(levels: usize) -> Vec<u8> {
        let mut bytes = INTENT_TAG.to_le_bytes().repeat(levels);
        bytes.extend(encode(&RowKey::Kv("k".into())));
        bytes
    }

    /// The bytes of `value` (which holds `RowKey::Kv(MARKER)` once) with
    /// that key replaced by an intent chain of `levels`.
    fn with_deep_key<T: Serialize>(value: &T, levels: usize) -> Vec<u8> {
        let bytes = encode(value);
        let marker = encode(&RowKey::Kv(MARKER.into()));
        let at = bytes.windows(marker.len()).position(|w| w == marker).expect("the value holds the marker key");
        [&bytes[..at], &intent_chain(levels)[..], &bytes[at + marker.len()..]].concat()
    }

    /// The bytes of `Many([Many([... Batch([]) ...])])` with `levels` Manys.
    fn many_chain(levels: usize) -> Vec<u8> {
        let one_many: Vec<u8> = MANY_TAG.to_le_bytes().into_iter().chain(1u64.to_le_bytes()).collect();
        let mut bytes = one_many.repeat(levels);
        bytes.extend(encode(&Command::Batch(vec![])));
        bytes
    }

    #[test]
    fn the_tags_written_by_hand_are_bincodes() {
        let intent = RowKey::Intent(Box::new(RowKey::Kv("k".into())));
        assert_eq!(encode(&intent), intent_chain(1));
        assert_eq!(encode(&Command::Many(vec![Command::Batch(vec![])])), many_chain(1));
    }

    #[test]
    fn the_bounded_options_read_what_plain_bincode_writes_and_vice_versa() {
        let command = Command::single(RowWrite::upsert(RowKey::Kv("key".into()), b"value".to_vec()));
        let plain = bincode::serialize(&command).unwrap();
        assert_eq!(options(MAX_COMMAND_BYTES).serialize(&command).unwrap(), plain);
        assert_eq!(decode::<Command>(&plain).unwrap(), command);
        assert_eq!(bincode::deserialize::<Command>(&plain).unwrap(), command);
        let mut trailing = plain.clone();
        trailing.extend([1, 2, 3]);
        assert_eq!(decode::<Command>(&trailing).unwrap(), bincode::deserialize::<Command>(&trailing).unwrap());
    }

    #[test]
    fn a_hundred_thousand_nested_intents_are_refused_not_a_crash() {
        // Peer messages are the largest the codec reads, big enough for a
        // chain deep enough to overflow a stack without the guard.
        let error = decode_peer_message::<RowKey>(&intent_chain(100_000)).unwrap_err();
        assert!(error.contains("nested deeper than MAX_NESTING"), "{error}");
        // Embedded in a query, a command and a result as well; plain bincode too.
        let marker = || RowKey::Kv(MARKER.into());
        let query = with_deep_key(&Query::Get(marker()), 100_000);
        assert!(decode_peer_message::<Query>(&query).unwrap_err().contains("MAX_NESTING"));
        assert!(bincode::deserialize::<Query>(&query).is_err());
        let put = with_deep_key(&Command::single(RowWrite::upsert(marker(), b"v".to_vec())), 100_000);
        assert!(decode_peer_message::<Command>(&put).unwrap_err().contains("MAX_NESTING"));
        let refused = with_deep_key(&CommandResult::Rejected(Rejection::NotFound(marker())), 100_000);
        assert!(decode_peer_message::<CommandResult>(&refused).unwrap_err().contains("MAX_NESTING"));
        let shallow = with_deep_key(&Query::Get(marker()), MAX_NESTING);
        assert!(decode::<Query>(&shallow).is_ok());
    }

    #[test]
    fn a_deep_many_is_refused_and_a_shallow_one_decodes() {
        let error = decode_peer_message::<Command>(&many_chain(100_000)).unwrap_err();
        assert!(error.contains("nested deeper than MAX_NESTING"), "{error}");
        assert!(decode::<Command>(&many_chain(MAX_NESTING + 1)).is_err());
        let two = Command::Many(vec![Command::Many(vec![Command::Batch(vec![])])]);
        assert_eq!(decode::<Command>(&encode(&two)).unwrap(), two);
        assert!(decode::<Command>(&many_chain(MAX_NESTING)).is_ok());
    }

    #[test]
    fn a_refusal_gives_every_level_back() {
        for _ in 0..10 {
            assert!(decode::<RowKey>(&intent_chain(MAX_NESTING + 1)).is_err());
        }
        NESTING.with(|depth| assert_eq!(depth.get(), 0));
        assert!(decode::<RowKey>(&intent_chain(MAX_NESTING)).is_ok());
    }

    #[test]
    fn input_over_the_limit_is_refused_before_it_is_read() {
        let huge = RowKey::Kv("x".repeat(MAX_COMMAND_BYTES));
        let error = decode::<RowKey>(&encode(&huge)).expect_err("too big");
        assert!(error.contains("more than the limit"), "{error}");
        assert!(decode_peer_message::<RowKey>(&encode(&huge)).is_ok_and(|key| key == huge));
        // A length prefix that claims 2^60 bytes allocates nothing.
        let claim: Vec<u8> = 3u32.to_le_bytes().into_iter().chain((1u64 << 60).to_le_bytes()).collect();
        assert!(decode::<RowKey>(&claim).is_err());
    }
}
