//! Safe retries: a write sent twice with the same idempotency key happens
//! at most once, and both calls get the first call's answer.
//!
//! A caller names a write with the gRPC metadata `idempotency-key` (at most
//! [`MAX_IDEMPOTENCY_KEY_BYTES`] of printable ASCII). The shop scopes the key
//! by the method (`CreateOrder:` + key, a [`Claim`]) and keeps it in one row,
//! `RowKey::Idempotency(shard, name)`, in the call's decision shard (the
//! entity's shard; for order calls the order's), so that the row and the
//! write commit in the same transaction:
//!
//! 1. Before planning, the shop reads the row linearizably. Present: the
//!    write committed before, and the call answers success at once.
//! 2. Otherwise the plan's decision part checks *first* that the row is
//!    absent and, on commit, writes it (its value: the request's
//!    [`Fingerprint`]) and its `IdempotencyDone(now, ..)` index entry, by
//!    which the shards forget it after [`IDEMPOTENCY_WINDOW`] (the
//!    proposing leader sets `now` by its own clock, the clock the leaders
//!    prune by).
//! 3. A refusal `AlreadyExists` of that row means a duplicate sent at the
//!    same time committed first: success, too. A refusal `Locked` on it,
//!    or on any row of its shard (an attempt holds the order's row too,
//!    which a prepare names first), may be another attempt of the call (a
//!    duplicate under way, or one whose portal died after it prepared),
//!    undecided and able to commit yet: the call waits and tries again,
//!    whatever the other shard refused meanwhile (its stock may be what
//!    the other attempt holds), and if the deadline comes first it answers
//!    that the call may or may not have been made.
//! 4. Any other refusal with a reason (400, 404) reads the row once more
//!    before it is the answer: another attempt of the call may have
//!    committed since step 1 (a duplicate sent at the same time whose
//!    commit made this attempt's plan stale, or one whose portal died with
//!    its prepare on the way) and made the state that refused this one —
//!    the order a delete wanted gone, gone. Present now, it answers
//!    success; still locked at the deadline (an attempt undecided), "may or
//!    may not" (as step 1's read answers then too). Not recorded, or not
//!    readable in time, the refusal stands: an attempt whose prepare lands
//!    only after this read can still commit.
//!
//! The row holds the request's fingerprint, so a key reused for another
//! request (other arguments, same method) is refused with a 400 rather than
//! answered with someone else's success. A call that was refused applied
//! nothing and records nothing, so its retry is evaluated afresh: a retry
//! after "client 7 already exists" may succeed if client 7 was deleted
//! since.

use storage_node::command::{Check, Effect, Row, RowKey};
use storage_node::fnv::Fnv1a;
use storage_node::limits::{IDEMPOTENCY_WINDOW, MAX_IDEMPOTENCY_KEY_BYTES};
use storage_node::Shard;
use tonic::metadata::MetadataMap;

use crate::request::BadRequest;
use crate::shop::ShopError;
use crate::txn::Plan;

/// The gRPC metadata that carries a write's idempotency key.
pub const METADATA_KEY: &str = "idempotency-key";

/// A caller's idempotency key, checked: 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`]
/// bytes of printable ASCII.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a key as sent.
    pub fn parse(text: &str) -> Result<Self, BadRequest> {
        if text.is_empty() {
            return Err(BadRequest(format!(
                "the {METADATA_KEY} is empty; leave it out or send 1 to {MAX_IDEMPOTENCY_KEY_BYTES} characters"
            )));
        }
        if text.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(BadRequest(format!(
                "the {METADATA_KEY} is {} bytes long; at most {MAX_IDEMPOTENCY_KEY_BYTES} are allowed",
                text.len()
            )));
        }
        if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(BadRequest(format!("the {METADATA_KEY} must be printable ASCII")));
        }
        Ok(IdempotencyKey(text.to_owned()))
    }

    /// The key a call's metadata carries, if any.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Option<Self>, BadRequest> {
        match metadata.get(METADATA_KEY) {
            None => Ok(None),
            Some(value) => match value.to_str() {
                Ok(text) => Self::parse(text).map(Some),
                Err(_) => Err(BadRequest(format!("the {METADATA_KEY} must be printable ASCII"))),
            },
        }
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// FNV-1a, 64 bits, of a request's parsed arguments: what tells a retry
/// from another request that reuses its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint(Fnv1a);

impl Fingerprint {
    /// The fingerprint of nothing yet.
    pub fn new() -> Self {
        Fingerprint(Fnv1a::new())
    }

    fn bytes(mut self, bytes: &[u8]) -> Self {
        self.0.write(bytes);
        self
    }

    /// Adds a number.
    pub fn number(self, n: u64) -> Self {
        self.bytes(&n.to_be_bytes())
    }

    /// Adds a float, by its bits.
    pub fn float(self, x: f64) -> Self {
        self.number(x.to_bits())
    }

    /// Adds a text, length first, so that ("ab","c") and ("a","bc") differ.
    pub fn text(self, text: &str) -> Self {
        self.number(text.len() as u64).bytes(text.as_bytes())
    }

    /// The fingerprint as stored in a key's row.
    fn encode(self) -> Vec<u8> {
        self.0.finish().to_be_bytes().to_vec()
    }
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

/// One write's hold on an idempotency key: the key scoped by the method,
/// and the fingerprint of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The method, e.g. `CreateOrder`, for messages.
    method: &'static str,
    /// The caller's key, for messages.
    key: String,
    /// The row's name: method, `:`, key.
    name: String,
    /// The request's fingerprint.
    fingerprint: Fingerprint,
}

impl Claim {
    /// The claim of `method` (`CreateOrder`) on `key` for a request with
    /// this `fingerprint`.
    pub fn new(method: &'static str, key: &IdempotencyKey, fingerprint: Fingerprint) -> Self {
        Claim { method, key: key.0.clone(), name: format!("{method}:{}", key.0), fingerprint }
    }

    /// The row that records the key in `shard`.
    pub fn row(&self, shard: Shard) -> RowKey {
        RowKey::Idempotency(shard, self.name.clone())
    }

    /// True if `key` is this claim's row (in any shard).
    pub fn is_row(&self, key: &RowKey) -> bool {
        matches!(key, RowKey::Idempotency(_, name) if *name == self.name)
    }

    /// Makes `plan` record the key in its decision `shard`: the absence
    /// check goes first, so a duplicate is told apart from any other
    /// refusal; the row and its index entry (stamped `now_ms`) are written
    /// with the rest.
    pub fn guard(&self, plan: &mut Plan, shard: Shard, now_ms: u64) {
        plan.check_first(shard, Check::Absent(self.row(shard)))
            .effect(shard, Effect::Put(self.row(shard), self.fingerprint.encode()))
            .effect(shard, Effect::Put(RowKey::IdempotencyDone(now_ms, shard, self.name.clone()), Vec::new()));
    }

    /// The answer to a call whose key was recorded as `row`: the first
    /// call's success if the request is the same, else a 400.
    pub fn verdict(&self, row: &Row) -> Result<(), ShopError> {
        if row.value == self.fingerprint.encode() {
            return Ok(());
        }
        Err(ShopError::BadRequest(format!(
            "idempotency key {:?} was used for a different {} request within the last {} minutes; \
             send a new key for a new request",
            self.key,
            self.method,
            IDEMPOTENCY_WINDOW.as_secs() / 60
        )))
    }
}

/// Milliseconds since the epoch by this portal's clock, for the key's index
/// entry as planned; the proposing leader dates it again by its own clock
/// (`TxnPart::date_idempotency_entries`), by which the key is pruned.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_printable_ascii() {
        assert_eq!(IdempotencyKey::parse("abc-123 ~").map(|k| k.as_str().to_owned()), Ok("abc-123 ~".into()));
        assert!(IdempotencyKey::parse("").unwrap_err().0.contains("empty"));
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
        assert!(IdempotencyKey::parse(&long).unwrap_err().0.contains("at most 128"));
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES)).is_ok());
        assert!(IdempotencyKey::parse("tab\there").unwrap_err().0.contains("printable ASCII"));
        assert!(IdempotencyKey::parse("é").unwrap_err().0.contains("printable ASCII"));
    }

    #[test]
    fn metadata_carries_the_key() {
        let mut metadata = MetadataMap::new();
        assert_eq!(IdempotencyKey::from_metadata(&metadata), Ok(None));
        metadata.insert(METADATA_KEY, "k1".parse().unwrap());
        assert_eq!(IdempotencyKey::from_metadata(&metadata), Ok(Some(IdempotencyKey("k1".into()))));
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = Fingerprint::new().text("ab").text("c");
        assert_ne!(a, Fingerprint::new().text("a").text("bc"));
        assert_eq!(a, Fingerprint::new().text("ab").text("c"));
        assert_ne!(Fingerprint::new().float(1.0), Fingerprint::new().float(1.5));
        // FNV-1a 64 of the empty input is its offset basis.
        assert_eq!(Fingerprint::new().0.finish(), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn the_guard_checks_first_and_a_reused_key_is_a_400() {
        let key = IdempotencyKey::parse("k").unwrap();
        let claim = Claim::new("CreateClient", &key, Fingerprint::new().number(7));
        assert_eq!(claim.row(Shard::Odd), RowKey::Idempotency(Shard::Odd, "CreateClient:k".into()));
        let mut plan = Plan::default();
        plan.check(Shard::Odd, Check::Absent(RowKey::Client(7)));
        claim.guard(&mut plan, Shard::Odd, 99);
        let (checks, effects) = plan.part(Shard::Odd).expect("the decision shard's part");
        assert_eq!(checks[0], Check::Absent(claim.row(Shard::Odd)));
        assert_eq!(effects.len(), 2);
        let same = Row { version: 1, value: Fingerprint::new().number(7).encode() };
        assert_eq!(claim.verdict(&same), Ok(()));
        let other = Row { version: 1, value: Fingerprint::new().number(8).encode() };
        let refused = claim.verdict(&other).unwrap_err();
        assert_eq!(refused.code(), 400);
        assert!(refused.to_string().contains("was used for a different CreateClient request"), "{refused}");
    }
}
