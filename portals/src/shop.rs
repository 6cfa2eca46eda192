//! The shop's operations as the portals call them: typed inputs in, typed
//! records out, every business rule enforced inside the storage shards.
//!
//! A [`Shop`] holds no data: each call is planned from fresh linearizable
//! reads and executed as one atomic command on one shard, or as a two-phase
//! commit across both shards when the entities involved live in different
//! shards. See the module `txn` for how that stays atomic when a portal dies.
//!
//! Every write takes an optional [`IdempotencyKey`]: with one, the call
//! happens at most once however often it is sent (see [`crate::idempotency`]).
//!
//! This file holds the shop's types, the client and product calls, and the
//! machinery every call shares (linearizable reads that wait out locks,
//! running a plan under an idempotency claim, the API's errors); the order
//! calls are in [`crate::orders`], the listing of a client's orders in
//! [`crate::listing`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use storage_node::client::ClusterClient;
use storage_node::command::{Check, Effect, Query, QueryResult, Rejection, Row, RowKey};
use storage_node::records::shop::{decode_record, encode_record, ClientRecord, OrderRecord, ProductRecord};
use storage_node::Shard;
use tokio::time::Instant;

use crate::idempotency::{self, Claim, Fingerprint, IdempotencyKey};
use crate::txn::{self, Plan, TxnFailure};

/// Pause before reading a row again that a transaction in flight locks.
const LOCKED_READ_BACKOFF: Duration = Duration::from_millis(3);
/// How long a read waits for a lock's own portal to resolve it before it
/// asks the transaction's participants itself (a committed transaction is
/// normally resolved within one round after its caller was answered).
const HELP_AFTER: Duration = Duration::from_millis(50);

/// How a 503 says that a write may have happened although no answer came:
/// a caller that sent an idempotency key can safely send it again.
pub const OUTCOME_UNKNOWN: &str = "the change may or may not have been made";

/// A product as a caller describes it (create or update).
#[derive(Clone, Debug, PartialEq)]
pub struct ProductInput {
    /// Display name.
    pub name: String,
    /// Unit price, >= 0.
    pub price: f64,
    /// Units in stock.
    pub quantity: u64,
    /// Other fields of the caller's JSON object, as JSON object text.
    pub extra: String,
}

/// One requested line of an order: a product and an absolute quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemRequest {
    /// The product.
    pub pid: u64,
    /// For CreateOrder, units wanted (repeated PIDs are summed, must be > 0);
    /// for UpdateOrder, the new absolute quantity (0 removes the line).
    pub quantity: u64,
}

/// An order as RetrieveOrder shows it: lines with names and a total.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderView {
    /// The order's ID.
    pub oid: u64,
    /// Its client.
    pub cid: u64,
    /// Its lines, by PID.
    pub lines: Vec<OrderLineView>,
    /// Sum of quantity x price over the lines.
    pub total: f64,
}

/// One line of an [`OrderView`].
#[derive(Clone, Debug, PartialEq)]
pub struct OrderLineView {
    /// The product.
    pub pid: u64,
    /// Its current name.
    pub name: String,
    /// Units ordered.
    pub quantity: u64,
    /// Unit price when the line was added.
    pub price: f64,
}

/// Why a shop call failed; maps onto the API's reply codes.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ShopError {
    /// Malformed or impossible input, or a rule refused it (400).
    #[error("{0}")]
    BadRequest(String),
    /// Something named does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The answer would be larger than a call may return (413; only ends a
    /// stream, never in a `Reply`).
    #[error("{0}")]
    TooLarge(String),
    /// A shard could not make progress before the deadline (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or corrupt data (500).
    #[error("{0}")]
    Internal(String),
}

impl ShopError {
    /// The API's `Reply.error` code for this failure.
    pub fn code(&self) -> i32 {
        match self {
            ShopError::BadRequest(_) => 400,
            ShopError::NotFound(_) => 404,
            ShopError::TooLarge(_) => 413,
            ShopError::Unavailable(_) => 503,
            ShopError::Internal(_) => 500,
        }
    }
}

/// The shop, as seen from a stateless portal. Cheap to clone.
#[derive(Clone)]
pub struct Shop {
    /// Clients of both shards.
    pub(crate) cluster: Arc<ClusterClient>,
    /// Sends committed transactions' resolves, many to a call.
    pub(crate) resolver: Arc<crate::txn::Resolver>,
    /// How long one call may take end to end.
    pub(crate) deadline: Duration,
    /// Most orders one RetrieveClientOrders call lists.
    pub(crate) max_listed_orders: usize,
}

impl Shop {
    /// A shop over `cluster`, each call bounded by `deadline`.
    pub fn new(cluster: ClusterClient, deadline: Duration) -> Self {
        let cluster = Arc::new(cluster);
        let resolver = Arc::new(crate::txn::Resolver::new(Arc::clone(&cluster)));
        Shop { cluster, resolver, deadline, max_listed_orders: crate::listing::MAX_LISTED_ORDERS }
    }

    /// This shop, listing at most `orders` orders per RetrieveClientOrders
    /// call instead of [`crate::listing::MAX_LISTED_ORDERS`].
    pub fn listing_at_most(self, orders: usize) -> Self {
        Shop { max_listed_orders: orders, ..self }
    }

    /// This shop, giving each call at most `deadline` (less if its own is
    /// shorter).
    pub fn deadline_at_most(self, deadline: Duration) -> Self {
        Shop { deadline: self.deadline.min(deadline), ..self }
    }

    /// The clients of both shards this shop uses.
    pub fn cluster(&self) -> Arc<ClusterClient> {
        self.cluster.clone()
    }

    /// Creates client `cid` with its JSON object `document` (400 if it exists).
    pub async fn create_client(
        &self,
        cid: u64,
        document: String,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<(), ShopError> {
        let claim = idempotency.map(|k| Claim::new("CreateClient", k, Fingerprint::new().number(cid).text(&document)));
        let key = RowKey::Client(cid);
        let record = encode_record(&ClientRecord { document });
        self.single(key.shard(), vec![Check::Absent(key.clone())], vec![Effect::Put(key, record)], claim).await
    }

    /// The client `cid`, `None` if absent.
    pub async fn get_client(&self, cid: u64) -> Result<Option<ClientRecord>, ShopError> {
        self.get_record(RowKey::Client(cid)).await
    }

    /// Replaces client `cid`'s document (404 if absent).
    pub async fn update_client(
        &self,
        cid: u64,
        document: String,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<(), ShopError> {
        let claim = idempotency.map(|k| Claim::new("UpdateClient", k, Fingerprint::new().number(cid).text(&document)));
        let key = RowKey::Client(cid);
        let record = encode_record(&ClientRecord { document });
        self.single(key.shard(), vec![Check::Exists(key.clone())], vec![Effect::Put(key, record)], claim).await
    }

    /// Deletes client `cid` (404 if absent, 400 if it has orders).
    pub async fn delete_client(&self, cid: u64, idempotency: Option<&IdempotencyKey>) -> Result<(), ShopError> {
        let claim = idempotency.map(|k| Claim::new("DeleteClient", k, Fingerprint::new().number(cid)));
        let key = RowKey::Client(cid);
        let checks = vec![Check::Exists(key.clone()), Check::NoOrdersOfClient(cid)];
        self.single(key.shard(), checks, vec![Effect::Delete(key)], claim).await
    }

    /// Creates product `pid` (400 if it exists).
    pub async fn create_product(
        &self,
        pid: u64,
        product: ProductInput,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<(), ShopError> {
        let claim = idempotency.map(|k| Claim::new("CreateProduct", k, product.fingerprint(pid)));
        let key = RowKey::Product(pid);
        let record = encode_record(&product.into_record());
        self.single(key.shard(), vec![Check::Absent(key.clone())], vec![Effect::Put(key, record)], claim).await
    }

    /// The product `pid`, `None` if absent.
    pub async fn get_product(&self, pid: u64) -> Result<Option<ProductRecord>, ShopError> {
        self.get_record(RowKey::Product(pid)).await
    }

    /// Replaces product `pid` (404 if absent); orders keep their prices.
    pub async fn update_product(
        &self,
        pid: u64,
        product: ProductInput,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<(), ShopError> {
        let claim = idempotency.map(|k| Claim::new("UpdateProduct", k, product.fingerprint(pid)));
        let key = RowKey::Product(pid);
        let record = encode_record(&product.into_record());
        self.single(key.shard(), vec![Check::Exists(key.clone())], vec![Effect::Put(key, record)], claim).await
    }

    /// Deletes product `pid` (404 if absent, 400 if some order holds it).
    pub async fn delete_product(&self, pid: u64, idempotency: Option<&IdempotencyKey>) -> Result<(), ShopError> {
        let claim = idempotency.map(|k| Claim::new("DeleteProduct", k, Fingerprint::new().number(pid)));
        let key = RowKey::Product(pid);
        let checks = vec![Check::Exists(key.clone()), Check::NoOrdersOfProduct(pid)];
        self.single(key.shard(), checks, vec![Effect::Delete(key)], claim).await
    }

    /// Runs a one-shard plan, at most once under `claim`.
    async fn single(
        &self,
        shard: Shard,
        checks: Vec<Check>,
        effects: Vec<Effect>,
        claim: Option<Claim>,
    ) -> Result<(), ShopError> {
        let give_up = Instant::now() + self.deadline;
        if self.recorded(claim.as_ref(), shard, give_up).await? {
            return Ok(());
        }
        let mut plan = Plan::default();
        for check in checks {
            plan.check(shard, check);
        }
        for effect in effects {
            plan.effect(shard, effect);
        }
        let outcome = self.run(plan, shard, claim.as_ref(), give_up).await;
        self.settle(outcome, claim.as_ref(), shard, give_up).await
    }

    /// True if `claim`'s key is recorded in `shard` for this same request
    /// (the write happened before: answer its success); a 400 if it is
    /// recorded for another request.
    pub(crate) async fn recorded(
        &self,
        claim: Option<&Claim>,
        shard: Shard,
        give_up: Instant,
    ) -> Result<bool, ShopError> {
        let Some(claim) = claim else { return Ok(false) };
        match self.read_row(claim.row(shard), give_up).await? {
            Some(row) => claim.verdict(&row).map(|()| true),
            None => Ok(false),
        }
    }

    /// Runs `plan`, recording `claim`'s key in the `decision` shard with it.
    pub(crate) async fn run(
        &self,
        mut plan: Plan,
        decision: Shard,
        claim: Option<&Claim>,
        give_up: Instant,
    ) -> Result<(), TxnFailure> {
        if let Some(claim) = claim {
            claim.guard(&mut plan, decision, idempotency::now_ms());
        }
        txn::run(&self.cluster, &self.resolver, &plan, decision, claim.is_some(), give_up).await
    }

    /// Plans with `plan` and runs the plan until it commits or is refused
    /// for good: one that went stale (a price or a version changed under
    /// it) is planned again from fresh reads, until `give_up`. `plan`
    /// answering `None` means there is nothing to change. (A closure
    /// returning a future, not an `async` closure: tonic needs the call's
    /// future to be `Send`, which an `AsyncFnMut` bound cannot promise.)
    pub(crate) async fn replan<Planned>(
        &self,
        decision: Shard,
        claim: Option<&Claim>,
        give_up: Instant,
        mut plan: impl FnMut() -> Planned,
    ) -> Result<(), ShopError>
    where
        Planned: std::future::Future<Output = Result<Option<Plan>, ShopError>>,
    {
        loop {
            let planned = match plan().await {
                Ok(Some(planned)) => planned,
                Ok(None) => return Ok(()),
                Err(refused) => return self.unless_recorded(refused, claim, decision, give_up).await,
            };
            match self.run(planned, decision, claim, give_up).await {
                Err(TxnFailure::Stale(_)) if Instant::now() < give_up => continue,
                outcome => return self.settle(outcome, claim, decision, give_up).await,
            }
        }
    }

    /// The answer to a plan's `outcome`: a refusal because `claim`'s key is
    /// recorded means a duplicate sent at the same time committed first,
    /// whose success is the answer (if it was the same request).
    pub(crate) async fn settle(
        &self,
        outcome: Result<(), TxnFailure>,
        claim: Option<&Claim>,
        decision: Shard,
        give_up: Instant,
    ) -> Result<(), ShopError> {
        match (outcome, claim) {
            (Err(TxnFailure::Refused(Rejection::AlreadyExists(key))), Some(claim)) if claim.is_row(&key) => {
                match self.read_row(claim.row(decision), give_up).await? {
                    Some(row) => claim.verdict(&row),
                    // Pruned in between: it was recorded, so it committed.
                    None => Ok(()),
                }
            }
            (outcome, _) => match outcome.map_err(failure_to_error) {
                Err(refused) => self.unless_recorded(refused, claim, decision, give_up).await,
                Ok(()) => Ok(()),
            },
        }
    }

    /// The answer to a call with `claim` refused with a reason (400, 404):
    /// success instead if the key is recorded by now. Another attempt of
    /// the same call may have committed since this one first read the key
    /// (a duplicate sent at the same time, or an attempt whose portal died
    /// with its prepare on the way), and made the state that refused this
    /// one: the order this delete wanted gone already gone, say.
    async fn unless_recorded(
        &self,
        refused: ShopError,
        claim: Option<&Claim>,
        decision: Shard,
        give_up: Instant,
    ) -> Result<(), ShopError> {
        if claim.is_none() || !matches!(refused, ShopError::BadRequest(_) | ShopError::NotFound(_)) {
            return Err(refused);
        }
        match self.recorded(claim, decision, give_up).await {
            Ok(true) => Ok(()),
            // The key was recorded for another request, or an attempt of
            // this call holding it was undecided at the deadline.
            Err(reused @ ShopError::BadRequest(_)) => Err(reused),
            Err(ShopError::Unavailable(undecided)) if undecided.contains(OUTCOME_UNKNOWN) => {
                Err(ShopError::Unavailable(undecided))
            }
            // Not recorded, or the shard did not answer in time: the
            // refusal stands.
            Ok(false) | Err(_) => Err(refused),
        }
    }

    /// Answers a query linearizably, waiting out locks of transactions in
    /// flight until `give_up`. A lock held past [`HELP_AFTER`] is a
    /// transaction whose portal is slow or gone: the read reads both
    /// participants' records and, if they already fix the outcome, resolves
    /// it instead of waiting for the shards' recovery.
    pub(crate) async fn read(&self, shard: Shard, query: Query, give_up: Instant) -> Result<QueryResult, ShopError> {
        // The transaction this read last helped, and since when it waits.
        let mut helped = None;
        let started = Instant::now();
        // The row last found locked: a read that then runs out of time
        // reports the lock, which is why it waited.
        let mut waited_for = None;
        // Too late to wait for a lock once more.
        let out_of_time = || Instant::now() + LOCKED_READ_BACKOFF >= give_up;
        loop {
            let budget = give_up.saturating_duration_since(Instant::now());
            let answer = match self.cluster.shard(shard).read(&query, budget).await {
                Ok(answer) => answer,
                Err(e) => {
                    return Err(match &waited_for {
                        Some(key) if out_of_time() => locked_at_deadline(key),
                        _ => ShopError::Unavailable(e.to_string()),
                    })
                }
            };
            match answer {
                QueryResult::Locked { key, .. } if out_of_time() => {
                    return Err(locked_at_deadline(&key));
                }
                QueryResult::Locked { key, holder } => {
                    waited_for = Some(key);
                    if started.elapsed() >= HELP_AFTER && helped != Some(holder) {
                        // Its portal should have resolved it by now: learn
                        // from the participants' records whether it is
                        // settled.
                        helped = Some(holder);
                        txn::help_resolve(&self.cluster, holder, give_up).await;
                    } else {
                        tokio::time::sleep(LOCKED_READ_BACKOFF).await;
                    }
                }
                answer => return Ok(answer),
            }
        }
    }

    /// One row, `None` if absent.
    pub(crate) async fn read_row(&self, key: RowKey, give_up: Instant) -> Result<Option<Row>, ShopError> {
        match self.read(key.shard(), Query::Get(key), give_up).await? {
            QueryResult::Row(row) => Ok(row),
            other => Err(ShopError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Several rows, fetched per shard in parallel, in the order asked.
    pub(crate) async fn read_rows(&self, keys: Vec<RowKey>, give_up: Instant) -> Result<Vec<Option<Row>>, ShopError> {
        let mut per_shard: BTreeMap<Shard, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            per_shard.entry(key.shard()).or_default().push(i);
        }
        let fetches = per_shard.into_iter().map(|(shard, positions)| {
            let query = Query::GetMany(positions.iter().map(|i| keys[*i].clone()).collect());
            async move { (positions, self.read(shard, query, give_up).await) }
        });
        let mut rows = vec![None; keys.len()];
        for (positions, answer) in futures::future::join_all(fetches).await {
            match answer? {
                QueryResult::Many(found) => positions.into_iter().zip(found).for_each(|(i, row)| rows[i] = row),
                other => return Err(ShopError::Internal(format!("unexpected answer {other:?}"))),
            }
        }
        Ok(rows)
    }

    /// A record, `None` if absent.
    async fn get_record<T: serde::de::DeserializeOwned>(&self, key: RowKey) -> Result<Option<T>, ShopError> {
        let give_up = Instant::now() + self.deadline;
        match self.read_row(key, give_up).await? {
            Some(row) => decode_record(&row.value).map(Some).map_err(ShopError::Internal),
            None => Ok(None),
        }
    }

    /// Order `oid` and its version, `None` if absent.
    pub(crate) async fn read_order(&self, oid: u64, give_up: Instant) -> Result<Option<(OrderRecord, u64)>, ShopError> {
        match self.read_row(RowKey::Order(oid), give_up).await? {
            Some(row) => Ok(Some((decode_record(&row.value).map_err(ShopError::Internal)?, row.version))),
            None => Ok(None),
        }
    }

    /// Order `oid` if it exists and belongs to `cid`, else 404.
    pub(crate) async fn owned_order(
        &self,
        oid: u64,
        cid: u64,
        give_up: Instant,
    ) -> Result<(OrderRecord, u64), ShopError> {
        match self.read_order(oid, give_up).await? {
            None => Err(ShopError::NotFound(format!("order {oid} does not exist"))),
            Some((order, _)) if order.cid != cid => {
                Err(ShopError::NotFound(format!("order {oid} does not belong to client {cid}")))
            }
            Some(found) => Ok(found),
        }
    }

    /// Names of `pids`; a product gone since is named "".
    pub(crate) async fn names(
        &self,
        pids: impl Iterator<Item = u64>,
        give_up: Instant,
    ) -> Result<BTreeMap<u64, String>, ShopError> {
        let products = self.products(pids, give_up).await?;
        Ok(products.into_iter().map(|(pid, product)| (pid, product.map(|p| p.name).unwrap_or_default())).collect())
    }

    /// The products `pids`, each or why not.
    async fn products(
        &self,
        pids: impl Iterator<Item = u64>,
        give_up: Instant,
    ) -> Result<Vec<(u64, Result<ProductRecord, ShopError>)>, ShopError> {
        let pids: Vec<u64> = pids.collect::<BTreeSet<_>>().into_iter().collect();
        let rows = self.read_rows(pids.iter().map(|pid| RowKey::Product(*pid)).collect(), give_up).await?;
        Ok(pids
            .into_iter()
            .zip(rows)
            .map(|(pid, row)| {
                let product = match row {
                    Some(row) => decode_record(&row.value).map_err(ShopError::Internal),
                    None => Err(ShopError::NotFound(format!("product {pid} does not exist"))),
                };
                (pid, product)
            })
            .collect())
    }
}

impl ProductInput {
    /// The fingerprint of a product write on `pid`, for idempotency.
    fn fingerprint(&self, pid: u64) -> Fingerprint {
        Fingerprint::new().number(pid).text(&self.name).float(self.price).number(self.quantity).text(&self.extra)
    }

    fn into_record(self) -> ProductRecord {
        ProductRecord { name: self.name, price: self.price, quantity: self.quantity, extra: self.extra }
    }
}

/// A row named for people: "client 7", "order 10".
fn describe(key: &RowKey) -> String {
    match key {
        RowKey::Client(id) => format!("client {id}"),
        RowKey::Product(id) => format!("product {id}"),
        RowKey::Order(id) => format!("order {id}"),
        other => other.to_string(),
    }
}

/// The API error for a transaction that did not commit.
fn failure_to_error(failure: TxnFailure) -> ShopError {
    match failure {
        TxnFailure::Refused(rejection) | TxnFailure::Stale(rejection) => rejection_to_error(rejection),
        TxnFailure::Unavailable { detail, maybe_committed: false } => ShopError::Unavailable(detail),
        TxnFailure::Overtaken => ShopError::Unavailable("the change could not commit in time; try again".into()),
        TxnFailure::Unavailable { detail, maybe_committed: true } => {
            ShopError::Unavailable(format!("{detail}; {OUTCOME_UNKNOWN}"))
        }
    }
}

/// The answer to a read that found `key` locked until its deadline. An
/// idempotency key is locked only by an attempt of the call it names,
/// which may still commit.
fn locked_at_deadline(key: &RowKey) -> ShopError {
    match key {
        RowKey::Idempotency(..) => ShopError::Unavailable(format!(
            "another attempt of this call was still undecided at the deadline; {OUTCOME_UNKNOWN}"
        )),
        key => ShopError::Unavailable(format!("{} stayed locked by a transaction until the deadline", describe(key))),
    }
}

/// The API error for a shard's refusal, in words a person understands.
fn rejection_to_error(rejection: Rejection) -> ShopError {
    match rejection {
        Rejection::AlreadyExists(key) => ShopError::BadRequest(format!("{} already exists", describe(&key))),
        Rejection::NotFound(key) => ShopError::NotFound(format!("{} does not exist", describe(&key))),
        Rejection::VersionMismatch { key, .. } => {
            ShopError::Unavailable(format!("{} kept changing; try again", describe(&key)))
        }
        Rejection::PriceChanged { pid } => {
            ShopError::Unavailable(format!("the price of product {pid} kept changing; try again"))
        }
        Rejection::Locked { key, .. } => ShopError::Unavailable(format!("{} is busy; try again", describe(&key))),
        Rejection::Aborted(_) => ShopError::Unavailable("the change was interrupted; try again".into()),
        Rejection::Fenced { .. } => {
            ShopError::Unavailable("a backup is being taken; changes across shards wait for it; try again".into())
        }
        r @ (Rejection::InsufficientStock { .. }
        | Rejection::StockLimit { .. }
        | Rejection::ClientHasOrders(_)
        | Rejection::ProductInOrders(_)) => ShopError::BadRequest(r.to_string()),
        // A late copy answers a call that has its answer already; meeting
        // one here is a bug.
        r @ (Rejection::Invalid(_) | Rejection::Corrupt { .. } | Rejection::LateCopy { .. }) => {
            ShopError::Internal(r.to_string())
        }
    }
}
