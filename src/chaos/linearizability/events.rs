//! The time-ordered list of call and deadline events that the search walks.
//!
//! Each operation contributes two entries: its call, and its deadline (the
//! return of an acknowledged operation, the drop point of an optional one).
//! Entries are sorted by time; at equal times calls come first, so that
//! operations touching the same instant count as concurrent — the reading
//! that can only hide a violation, never invent one.
//!
//! Linearizing (or dropping) an operation *lifts* both its entries out of the
//! list in O(1); backtracking puts them back in O(1) in reverse order
//! (Knuth's dancing links). The list is circular around a sentinel node.

use super::prepare::{Deadline, KeyHistory};

/// A position in the list; [`END`] is the sentinel.
pub(super) type Node = usize;

/// The sentinel: the node before the first entry and after the last.
pub(super) const END: Node = 0;

/// What happens at one point of the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Entry {
    /// The operation may take effect from here on.
    Call(usize),
    /// The acknowledged operation must have taken effect before here.
    Return(usize),
    /// The optional operation not yet applied is dropped here.
    DropPoint(usize),
}

/// One doubly-linked node; a lifted node keeps its links to find its way back.
#[derive(Clone, Copy, Debug)]
struct Link {
    /// The event, or `None` for the sentinel.
    entry: Option<Entry>,
    /// The node before this one.
    prev: Node,
    /// The node after this one.
    next: Node,
}

/// The walkable event list of one key's history.
#[derive(Debug)]
pub(super) struct EventList {
    /// All nodes; index 0 is the sentinel.
    links: Vec<Link>,
    /// Each operation's call node.
    call_nodes: Vec<Node>,
    /// Each operation's deadline node.
    deadline_nodes: Vec<Node>,
}

impl EventList {
    /// The events of `history`, all in the list.
    pub(super) fn new(history: &KeyHistory) -> Self {
        let mut events: Vec<(u64, u8, Entry)> = Vec::with_capacity(2 * history.ops.len());
        for (op, key_op) in history.ops.iter().enumerate() {
            events.push((key_op.called_at, 0, Entry::Call(op)));
            match key_op.deadline {
                Deadline::Required(at) => events.push((at, 1, Entry::Return(op))),
                Deadline::Optional(at) => events.push((at, 2, Entry::DropPoint(op))),
            }
        }
        events.sort_unstable_by_key(|&(at, rank, entry)| (at, rank, operation_of(entry)));
        Self::linked(history.ops.len(), events.into_iter().map(|(_, _, entry)| entry))
    }

    fn linked(op_count: usize, entries: impl ExactSizeIterator<Item = Entry>) -> Self {
        let node_count = entries.len() + 1;
        let mut links = vec![Link { entry: None, prev: node_count - 1, next: 1 % node_count }];
        let (mut call_nodes, mut deadline_nodes) = (vec![END; op_count], vec![END; op_count]);
        for (position, entry) in entries.enumerate() {
            let node = position + 1;
            match entry {
                Entry::Call(op) => call_nodes[op] = node,
                Entry::Return(op) | Entry::DropPoint(op) => deadline_nodes[op] = node,
            }
            links.push(Link { entry: Some(entry), prev: node - 1, next: (node + 1) % node_count });
        }
        Self { links, call_nodes, deadline_nodes }
    }

    /// The first entry still in the list ([`END`] if none).
    pub(super) fn first(&self) -> Node {
        self.links[END].next
    }

    /// The entry after `node` ([`END`] if none).
    pub(super) fn next(&self, node: Node) -> Node {
        self.links[node].next
    }

    /// The event at `node`.
    pub(super) fn entry(&self, node: Node) -> Entry {
        self.links[node].entry.expect("the walk never stands on the sentinel while operations remain")
    }

    /// The event at `node`, or `None` at the sentinel.
    pub(super) fn entry_at(&self, node: Node) -> Option<Entry> {
        self.links[node].entry
    }

    /// The call node of operation `op`.
    pub(super) fn call_node(&self, op: usize) -> Node {
        self.call_nodes[op]
    }

    /// Takes both entries of `op` out of the list.
    pub(super) fn lift(&mut self, op: usize) {
        self.unlink(self.call_nodes[op]);
        self.unlink(self.deadline_nodes[op]);
    }

    /// Puts back the entries of `op`, which must be the operation lifted last.
    pub(super) fn unlift(&mut self, op: usize) {
        self.relink(self.deadline_nodes[op]);
        self.relink(self.call_nodes[op]);
    }

    fn unlink(&mut self, node: Node) {
        let Link { prev, next, .. } = self.links[node];
        assert!(self.links[prev].next == node, "lifting a node that is not in the list");
        self.links[prev].next = next;
        self.links[next].prev = prev;
    }

    fn relink(&mut self, node: Node) {
        let Link { prev, next, .. } = self.links[node];
        assert!(self.links[prev].next == next, "unlifting out of order: node {node}'s neighbours moved");
        self.links[prev].next = node;
        self.links[next].prev = node;
    }
}

fn operation_of(entry: Entry) -> usize {
    match entry {
        Entry::Call(op) | Entry::Return(op) | Entry::DropPoint(op) => op,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(list: &EventList) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut node = list.first();
        while node != END {
            entries.push(list.entry(node));
            node = list.next(node);
        }
        entries
    }

    #[test]
    fn lift_and_unlift_restore_the_order() {
        use Entry::*;
        let mut list = EventList::linked(2, [Call(0), Call(1), Return(0), Return(1)].into_iter());
        list.lift(0);
        assert_eq!(walk(&list), vec![Call(1), Return(1)]);
        list.lift(1);
        assert_eq!(walk(&list), vec![]);
        list.unlift(1);
        list.unlift(0);
        assert_eq!(walk(&list), vec![Call(0), Call(1), Return(0), Return(1)]);
    }
}
