//! A replica in memory, for the state machine's unit tests: rows in a map,
//! the next log index, and `apply` as the real machine does it.

use std::collections::BTreeMap;

use super::apply::apply_command;
use crate::command::{Command, CommandResult, Row, RowKey};
use crate::types::LogIndex;

/// Rows and the last applied index of one in-memory replica.
#[derive(Default)]
pub struct Replica {
    /// The committed rows.
    pub rows: BTreeMap<RowKey, Row>,
    /// The index of the last applied command.
    pub index: LogIndex,
}

impl Replica {
    /// Applies `command` as the next log entry and keeps its changes.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        self.index += 1;
        let (result, changes) = apply_command(self.index, &command, &self.rows).expect("in-memory rows never fail");
        for (key, row) in changes {
            match row {
                Some(row) => self.rows.insert(key, row),
                None => self.rows.remove(&key),
            };
        }
        result
    }
}
