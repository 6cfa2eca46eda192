//! The labels `up` puts in front of its children's output lines.
//!
//! Every child's stdout and stderr pass through `up` line by line, each line
//! behind the child's name padded to the longest name, so the interleaved
//! output of a whole cluster stays readable and greppable:
//!
//! ```text
//! node-1 | 2026-01-01T10:00:00Z  INFO serving addr=127.0.0.1:50101
//! node-2 | ...
//! ```
//!
//! When stdout is a terminal each name gets its own colour; `NO_COLOR` (any
//! value) turns colours off, as it does for the children themselves.

use std::io::IsTerminal;

/// ANSI colours given to children in turn: cyan, yellow, green, magenta, blue,
/// red.
const PALETTE: [&str; 6] = ["\x1b[36m", "\x1b[33m", "\x1b[32m", "\x1b[35m", "\x1b[34m", "\x1b[31m"];
/// Ends a coloured span.
const RESET: &str = "\x1b[0m";
/// Between a name and the child's text.
const SEPARATOR: &str = " | ";

/// The prefix of one child's output lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// The padded, possibly coloured name and the separator.
    prefix: String,
}

impl Label {
    /// The label for `name`, padded to `width`, in the `index`th colour when
    /// `colour` is set.
    pub fn new(name: &str, width: usize, index: usize, colour: bool) -> Self {
        let padded = format!("{name:<width$}{SEPARATOR}");
        let prefix = if colour { format!("{}{padded}{RESET}", PALETTE[index % PALETTE.len()]) } else { padded };
        Label { prefix }
    }

    /// One raw output line behind the label; the line ending is dropped and
    /// bytes that are not UTF-8 are shown as replacement characters.
    pub fn line(&self, raw: &[u8]) -> String {
        let text = String::from_utf8_lossy(raw);
        format!("{}{}", self.prefix, text.trim_end_matches(['\n', '\r']))
    }
}

/// Labels for children named `names`, all padded to the longest name.
pub fn labels<'a>(names: impl IntoIterator<Item = &'a str> + Clone, colour: bool) -> Vec<Label> {
    let width = names.clone().into_iter().map(str::len).max().unwrap_or(0);
    names.into_iter().enumerate().map(|(index, name)| Label::new(name, width, index, colour)).collect()
}

/// True when labels should be coloured: stdout is a terminal and `NO_COLOR`
/// is unset.
pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_padded_to_the_longest() {
        let labels = labels(["node-1", "admin-portal"], false);
        assert_eq!(labels[0].line(b"hello\n"), "node-1       | hello");
        assert_eq!(labels[1].line(b"hi"), "admin-portal | hi");
    }

    #[test]
    fn line_endings_are_dropped_and_bad_bytes_replaced() {
        let label = Label::new("node-2", 6, 0, false);
        assert_eq!(label.line(b"crlf\r\n"), "node-2 | crlf");
        assert_eq!(label.line(b"\n"), "node-2 | ");
        assert_eq!(label.line(b"a\xffb\n"), "node-2 | a\u{fffd}b");
    }

    #[test]
    fn colours_cycle_and_reset_before_the_text() {
        let labels = labels(["a", "b", "c", "d", "e", "f", "g"], true);
        assert_eq!(labels[0].line(b"x"), "\x1b[36ma | \x1b[0mx");
        assert_eq!(labels[1].line(b"x"), "\x1b[33mb | \x1b[0mx");
        assert_eq!(labels[6].line(b"x"), "\x1b[36mg | \x1b[0mx");
    }
}
