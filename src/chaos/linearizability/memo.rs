//! The search's memory of the states it has entered.
//!
//! A state is the set of operations done plus the register value. The
//! operations of a key are numbered in call order and the search places them
//! roughly in that order, so a done set is nearly always "every operation
//! before some point, and a few after it". A state is stored that way: how
//! many leading 64-operation words are all done, the register, then the
//! words from the first not-all-done one to the last with anything done.
//! That encoding is exact — no hashing shortcut can confuse two states — and
//! a few words long however long the history is.

use std::collections::HashSet;

use super::prepare::ValueId;

/// A set of operation numbers that knows its full prefix and its extent.
#[derive(Debug)]
pub(super) struct DoneSet {
    /// Bit `i % 64` of word `i / 64` is set iff operation `i` is done.
    words: Vec<u64>,
    /// Words `..full_words` are all ones; word `full_words` is not.
    full_words: usize,
    /// Words `end_words..` are all zeros; word `end_words - 1` is not.
    end_words: usize,
}

impl DoneSet {
    /// The empty set over `len` operations.
    pub(super) fn new(len: usize) -> Self {
        DoneSet { words: vec![0; len.div_ceil(64)], full_words: 0, end_words: 0 }
    }

    /// Whether operation `op` is done.
    pub(super) fn contains(&self, op: usize) -> bool {
        self.words[op / 64] & (1 << (op % 64)) != 0
    }

    /// Marks `op` done if it was not, and not done if it was.
    pub(super) fn toggle(&mut self, op: usize) {
        let word = op / 64;
        self.words[word] ^= 1 << (op % 64);
        if self.words[word] == u64::MAX {
            while self.full_words < self.words.len() && self.words[self.full_words] == u64::MAX {
                self.full_words += 1;
            }
        } else {
            self.full_words = self.full_words.min(word);
        }
        if self.words[word] != 0 {
            self.end_words = self.end_words.max(word + 1);
        } else {
            while self.end_words > 0 && self.words[self.end_words - 1] == 0 {
                self.end_words -= 1;
            }
        }
    }

    /// Writes the exact compact encoding of (this set, `register`) into `key`.
    fn encode(&self, register: ValueId, key: &mut Vec<u64>) {
        key.clear();
        key.push((self.full_words as u64) << 32 | u64::from(register));
        if self.end_words > self.full_words {
            key.extend_from_slice(&self.words[self.full_words..self.end_words]);
        }
    }
}

/// Every (done set, register) state the search has entered.
#[derive(Debug, Default)]
pub(super) struct SeenStates {
    /// The encoded states.
    states: HashSet<Box<[u64]>>,
    /// Scratch space for encoding, reused to avoid an allocation per lookup.
    key: Vec<u64>,
}

impl SeenStates {
    /// Records the state; false if it was recorded before.
    pub(super) fn insert(&mut self, done: &DoneSet, register: ValueId) -> bool {
        done.encode(register, &mut self.key);
        if self.states.contains(&self.key[..]) {
            return false;
        }
        self.states.insert(self.key.clone().into_boxed_slice());
        true
    }

    /// How many states are recorded.
    pub(super) fn len(&self) -> usize {
        self.states.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_tracks_prefix_and_extent() {
        let mut done = DoneSet::new(200);
        let mut seen = SeenStates::default();
        assert!(seen.insert(&done, 0));
        assert!(!seen.insert(&done, 0));
        assert!(seen.insert(&done, 1), "the register is part of the state");
        for op in 0..64 {
            done.toggle(op);
        }
        done.toggle(130);
        assert_eq!((done.full_words, done.end_words), (1, 3));
        assert!(seen.insert(&done, 0));
        done.toggle(130);
        done.toggle(3);
        assert_eq!((done.full_words, done.end_words), (0, 1));
        assert!(!done.contains(3) && done.contains(4));
        done.toggle(3);
        done.toggle(130);
        assert!(!seen.insert(&done, 0), "the same set reached another way is the same state");
    }
}
