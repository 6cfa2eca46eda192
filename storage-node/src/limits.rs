//! The documented maxima of everything a caller can send, in one place.
//!
//! Every number that reaches the replicated state is bounded here, at the
//! edge (the portals' request parsing, the CLI, the `Store` service), and the
//! state machine checks the same bounds again: a command that exceeds them is
//! refused deterministically, never applied, never a panic. The bounds are
//! far below the integer limits, so sums of them cannot overflow either.

use std::time::Duration;

/// Most units of one product in stock, and most units of one order line.
pub const MAX_QUANTITY: u64 = 1_000_000_000;

/// Highest unit price of a product (a finite number, at least 0).
pub const MAX_PRICE: f64 = 1_000_000_000.0;

/// Most characters of an ID as text (`u64::MAX` has 20 digits).
pub const MAX_ID_CHARS: usize = 20;

/// Largest `data` JSON document of a client, product or order, in bytes.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// Most lines (distinct products, and items as sent) of one order.
pub const MAX_ORDER_LINES: usize = 100;

/// Longest idempotency key (gRPC metadata `idempotency-key`), in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Longest idempotency key as a row stores it: scoped by its method's name
/// (`CreateOrder:` and the caller's key).
pub const MAX_IDEMPOTENCY_ROW_BYTES: usize = MAX_IDEMPOTENCY_KEY_BYTES + 32;

/// How long a portal remembers a write's idempotency key: a repeat within
/// this window answers like the first call and applies nothing.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Longest a backup fence may hold cross-shard prepares back
/// (`Command::Fence`): a backup that dies cannot block them for longer.
pub const MAX_FENCE_HOLD: Duration = Duration::from_secs(60);

/// How long a client's write session may stay unused before the shard
/// forgets it (`Command::Once`). A client re-sends a write within one
/// call's deadline, seconds; after this, a copy of a write of a forgotten
/// session would be applied again.
pub const WRITER_IDLE: Duration = Duration::from_secs(10 * 60);

/// Longest key of the `kv` table, in bytes.
pub const MAX_KV_KEY_BYTES: usize = 1024;

/// Largest value of one `kv` row, in bytes.
pub const MAX_KV_VALUE_BYTES: usize = 64 * 1024;

/// Largest encoded command one `Store.Write` call may carry, in bytes; also
/// the decoding limit of every bincode value a node takes from the network.
///
/// Sized by replication, not by memory: under openraft 0.9 one
/// AppendEntries call had a heartbeat interval (100 ms) to be sent, written
/// and fdatasync'ed by the follower, and an entry far bigger than this
/// missed it on two busy cores (a debug build missed it at 1 MiB) and the
/// shard lost its leader for good. 0.10's streamed replication has no
/// per-call deadline, but heartbeats still do; the limit stays until that is
/// re-measured. The log reader also caps one AppendEntries at
/// [`MAX_APPEND_BYTES`].
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;

/// Most commands one `Store.WriteEach` call carries.
pub const MAX_WRITE_EACH: usize = 256;

/// Largest answer a node gives one `Store.Read` (and the most a client
/// decodes): a scan stops early to stay within half of it, and any other
/// answer that would pass it is refused with `RESOURCE_EXHAUSTED`.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// Most order IDs one `OrdersOfClient` query answers (8 MB of IDs).
pub const MAX_ORDER_IDS_PER_QUERY: usize = 1_000_000;

/// Byte budget of one batched log entry (several callers' commands): a
/// batch takes no more commands once it holds this much. A single command
/// of up to [`MAX_COMMAND_BYTES`] makes an entry of its own.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// Byte budget of one AppendEntries request: the log reader
/// (`limited_get_log_entries`) stops reading once a batch reaches it, and
/// the rest goes in the next request. A single entry is always sent,
/// whatever its size.
pub const MAX_APPEND_BYTES: usize = 256 * 1024;

/// Deepest nesting of wire types that contain themselves (`Command::Many`
/// inside `Command::Many`, the command of a `Command::Once`, an intent's
/// row key): deeper input is refused
/// while decoding, before it can exhaust a thread's stack.
pub const MAX_NESTING: usize = 4;

/// Largest gRPC message the `Store` service reads: a command of
/// [`MAX_COMMAND_BYTES`] plus room, so that a somewhat bigger one is still
/// read and refused with a sentence (`INVALID_ARGUMENT`); a message beyond
/// this is refused by tonic before it is read (`OUT_OF_RANGE`).
pub const MAX_STORE_MESSAGE_BYTES: usize = MAX_COMMAND_BYTES + 1024 * 1024;

/// Longest session a `Mutex` or `KeepAlive` command may grant its site.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(10 * 60);

/// Most change-feed watches one node serves at once; one more is refused
/// with `RESOURCE_EXHAUSTED` until a subscriber leaves.
pub const MAX_OPEN_WATCHES: usize = 1024;

/// Most feed watches one portal serves at once. Each holds a node watch in
/// both shards, on the same member of each, so two portals hold at most
/// half of a node's [`MAX_OPEN_WATCHES`], leaving the rest to direct
/// subscribers.
pub const MAX_PORTAL_WATCHES: usize = 256;
