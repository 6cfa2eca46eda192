//! Which rows a shard's state machine writes for an entry: its layout.
//!
//! Every replica must write the same rows for the same entries (replicas
//! compare state digests, and a snapshot of one is installed on another).
//! So when a build changes *what* apply writes — not what a command means,
//! only the bookkeeping it leaves — the change is numbered, and a shard
//! takes it at one log index on every replica: [`Command::UseLayout`],
//! which the leader proposes once every member runs a build that knows the
//! new layout (`crate::node::housekeeping`). Entries before it are applied
//! (and replayed) the old way, entries after it the new way. A layout never
//! goes back.
//!
//! - [`EVENT_ROWS`] (1), the first: each change-feed event in a row of its
//!   own (`crate::state::feed`).
//! - [`ENTRY_EVENTS`] (2): an entry's change-feed events in one row.
//! - [`UNRECORDED_EXECUTES`] (3): a single-shard transaction (`Execute`)
//!   leaves no transaction record. Its caller's write session
//!   ([`Command::Once`]) already applies it at most once; the record (and
//!   its `TxnDone` index entry, and pruning both later) only answered a
//!   repeat of the same transaction id, which the portals never send. Two
//!   of an order's ten-odd row writes, and the later prune's two removals,
//!   go away.
//! - [`ORDER_COUNTS`] (4): an order line's entry in its product's order
//!   index (`Effect::Put` / `Effect::Delete` of a `RowKey::ProductOrder`,
//!   as portals send them) is a count in the product's row
//!   ([`ProductRow`]) instead of a row of its own. The only question the
//!   index answers is whether a product may be deleted, and every order
//!   write rewrites its products' rows anyway for their stock, so two of a
//!   two-product order's six row writes go away, and in a cross-shard
//!   order the intents on the index rows (two writes each) too. Index rows
//!   written before stay until their orders let go of them, and still
//!   hold their products.
//!
//! [`Command::UseLayout`]: crate::command::Command::UseLayout
//! [`ProductRow`]: crate::records::shop::ProductRow
//! [`Command::Once`]: crate::command::Command::Once

use std::io;

use super::apply::{RowChanges, RowSource};
use crate::command::{CommandResult, Rejection, Row, RowKey};
use crate::types::LogIndex;

/// The first layout: each change-feed event in a row of its own.
pub const EVENT_ROWS: u32 = 1;
/// An entry's change-feed events in one row.
pub const ENTRY_EVENTS: u32 = 2;
/// As [`ENTRY_EVENTS`], and a single-shard transaction leaves no record.
pub const UNRECORDED_EXECUTES: u32 = 3;
/// As [`UNRECORDED_EXECUTES`], and products count their order lines
/// instead of keeping index rows.
pub const ORDER_COUNTS: u32 = 4;
/// The newest layout this build reads and writes.
pub const NEWEST: u32 = ORDER_COUNTS;

/// The layout the next entry is applied in: the last one [`use_layout`]
/// set, [`EVENT_ROWS`] if none was. A setting that does not decode (only a
/// damaged disk writes one) counts as [`EVENT_ROWS`], the same on every
/// replica holding it, rather than stopping the apply; the next
/// `UseLayout` writes it whole again.
pub fn current(rows: &impl RowSource) -> io::Result<u32> {
    let Some(row) = rows.row(&RowKey::Layout)? else { return Ok(EVENT_ROWS) };
    match <[u8; 4]>::try_from(row.value.as_slice()) {
        Ok(bytes) => Ok(u32::from_be_bytes(bytes)),
        Err(_) => {
            tracing::error!(bytes = row.value.len(), "the state's layout setting is corrupt; using layout 1");
            Ok(EVENT_ROWS)
        }
    }
}

/// Applies `UseLayout { layout }` at `index`: entries after it are applied
/// in `layout`. Layout 0, or one older than the current one, is refused
/// and changes nothing.
///
/// A layout newer than this build knows is an error, which stops the
/// node: its leader proposed it because every member said it knew it, so
/// this replica runs an older build than it did then (a downgrade, or a
/// member added since), and applying the entries after it the old way
/// would write other rows than the other replicas. Run a newer build.
pub fn use_layout(index: LogIndex, layout: u32, rows: &impl RowSource) -> io::Result<(CommandResult, RowChanges)> {
    if layout > NEWEST {
        return Err(unknown(layout));
    }
    let current = current(rows)?;
    let mut changes = RowChanges::new();
    if layout < EVENT_ROWS {
        let refusal = format!("layout {layout} is unknown to this build (it knows 1 to {NEWEST})");
        return Ok((CommandResult::Rejected(Rejection::Invalid(refusal)), changes));
    }
    if layout < current {
        let refusal = format!("the state is in layout {current} and does not go back to {layout}");
        return Ok((CommandResult::Rejected(Rejection::Invalid(refusal)), changes));
    }
    if layout > current {
        changes.insert(RowKey::Layout, Some(Row { version: index, value: layout.to_be_bytes().to_vec() }));
    }
    Ok((CommandResult::Applied { index }, changes))
}

/// `Ok` if this build knows the layout `rows` are in; the error a node
/// stops with if not (see [`use_layout`]).
pub fn check_known(rows: &impl RowSource) -> io::Result<()> {
    match current(rows)? {
        layout if layout > NEWEST => Err(unknown(layout)),
        _ => Ok(()),
    }
}

/// A layout newer than this build knows, met in the state or in the log
/// (the inner error of [`check_known`]'s and [`use_layout`]'s).
#[derive(Debug)]
struct UnknownLayout(u32);

impl std::fmt::Display for UnknownLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the shard switched to layout {}, and this build knows layouts 1 to {NEWEST}: it would write other rows \
             than the replicas that know it. Run the build the other members run",
            self.0
        )
    }
}

impl std::error::Error for UnknownLayout {}

/// The layout of an [`UnknownLayout`] error, if `error` is one.
pub fn unknown_layout(error: &io::Error) -> Option<u32> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<UnknownLayout>()).map(|unknown| unknown.0)
}

/// The error for a layout newer than this build's. `Unsupported`: not
/// damage to rebuild, and sled never says it of a state it opened.
pub fn unknown(layout: u32) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, UnknownLayout(layout))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_layout_is_refused_if_unknown_or_older_and_never_changes_then() {
        let rows = BTreeMap::from([(RowKey::Layout, Row { version: 3, value: ENTRY_EVENTS.to_be_bytes().to_vec() })]);
        for layout in [0, EVENT_ROWS] {
            let (result, changes) = use_layout(5, layout, &rows).unwrap();
            assert!(matches!(result, CommandResult::Rejected(Rejection::Invalid(_))), "{layout}: {result:?}");
            assert!(changes.is_empty());
        }
        // A newer one than this build knows stops the node instead of
        // going on in the old layout.
        for layout in [NEWEST + 1, u32::MAX] {
            let error = use_layout(5, layout, &rows).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::Unsupported);
            assert_eq!(unknown_layout(&error), Some(layout));
            assert!(error.to_string().contains(&format!("layout {layout}")), "{error}");
        }
        assert!(check_known(&rows).is_ok());
        let newer = BTreeMap::from([(RowKey::Layout, Row { version: 3, value: (NEWEST + 1).to_be_bytes().to_vec() })]);
        assert_eq!(unknown_layout(&check_known(&newer).unwrap_err()), Some(NEWEST + 1));
        assert_eq!(unknown_layout(&io::Error::other("another")), None);
        let (result, changes) = use_layout(5, ENTRY_EVENTS, &rows).unwrap();
        assert_eq!(result, CommandResult::Applied { index: 5 });
        assert!(changes.is_empty(), "the same layout again changes nothing");
        let (result, changes) = use_layout(6, NEWEST, &rows).unwrap();
        assert_eq!(result, CommandResult::Applied { index: 6 });
        assert_eq!(changes[&RowKey::Layout].as_ref().map(|row| row.value.clone()), Some(NEWEST.to_be_bytes().to_vec()));
        // A damaged setting does not stop the apply, and a switch repairs it.
        let corrupt = BTreeMap::from([(RowKey::Layout, Row { version: 3, value: vec![1] })]);
        assert_eq!(current(&corrupt).unwrap(), EVENT_ROWS);
        let (_, repaired) = use_layout(6, ENTRY_EVENTS, &corrupt).unwrap();
        assert!(repaired.contains_key(&RowKey::Layout));
    }
}
