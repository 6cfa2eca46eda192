//! The shop's operations as the portals call them: typed inputs in, typed
//! records out, every business rule enforced inside the storage shards.
//!
//! A [`Shop`] holds no data: each call is planned from fresh linearizable
//! reads and executed as one atomic command on one shard, or as a two-phase
//! commit across both shards when the entities involved live in different
//! shards. See the module `txn` for how that stays atomic when a portal dies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use storage_node::client::ClusterClient;
use storage_node::command::{Check, Effect, Query, QueryResult, Rejection, Row, RowKey};
use storage_node::shop::{decode_record, encode_record, ClientRecord, OrderLine, OrderRecord, ProductRecord};
use storage_node::Shard;
use tokio::time::Instant;

use crate::txn::{self, Plan, TxnFailure};

/// Pause before reading a row again that a transaction in flight locks.
const LOCKED_READ_BACKOFF: Duration = Duration::from_millis(3);

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
            ShopError::Unavailable(_) => 503,
            ShopError::Internal(_) => 500,
        }
    }
}

/// The shop, as seen from a stateless portal. Cheap to clone.
#[derive(Clone)]
pub struct Shop {
    /// Clients of both shards.
    cluster: Arc<ClusterClient>,
    /// How long one call may take end to end.
    deadline: Duration,
}

impl Shop {
    /// A shop over `cluster`, each call bounded by `deadline`.
    pub fn new(cluster: ClusterClient, deadline: Duration) -> Self {
        Shop { cluster: Arc::new(cluster), deadline }
    }

    /// The clients of both shards this shop uses.
    pub fn cluster(&self) -> Arc<ClusterClient> {
        self.cluster.clone()
    }

    /// Creates client `cid` with its JSON object `document` (400 if it exists).
    pub async fn create_client(&self, cid: u64, document: String) -> Result<(), ShopError> {
        let key = RowKey::Client(cid);
        let record = encode_record(&ClientRecord { document });
        self.single(key.shard(), vec![Check::Absent(key.clone())], vec![Effect::Put(key, record)]).await
    }

    /// The client `cid`, `None` if absent.
    pub async fn get_client(&self, cid: u64) -> Result<Option<ClientRecord>, ShopError> {
        self.get_record(RowKey::Client(cid)).await
    }

    /// Replaces client `cid`'s document (404 if absent).
    pub async fn update_client(&self, cid: u64, document: String) -> Result<(), ShopError> {
        let key = RowKey::Client(cid);
        let record = encode_record(&ClientRecord { document });
        self.single(key.shard(), vec![Check::Exists(key.clone())], vec![Effect::Put(key, record)]).await
    }

    /// Deletes client `cid` (404 if absent, 400 if it has orders).
    pub async fn delete_client(&self, cid: u64) -> Result<(), ShopError> {
        let key = RowKey::Client(cid);
        let checks = vec![Check::Exists(key.clone()), Check::NoOrdersOfClient(cid)];
        self.single(key.shard(), checks, vec![Effect::Delete(key)]).await
    }

    /// Creates product `pid` (400 if it exists).
    pub async fn create_product(&self, pid: u64, product: ProductInput) -> Result<(), ShopError> {
        let key = RowKey::Product(pid);
        let record = encode_record(&product.into_record());
        self.single(key.shard(), vec![Check::Absent(key.clone())], vec![Effect::Put(key, record)]).await
    }

    /// The product `pid`, `None` if absent.
    pub async fn get_product(&self, pid: u64) -> Result<Option<ProductRecord>, ShopError> {
        self.get_record(RowKey::Product(pid)).await
    }

    /// Replaces product `pid` (404 if absent); orders keep their prices.
    pub async fn update_product(&self, pid: u64, product: ProductInput) -> Result<(), ShopError> {
        let key = RowKey::Product(pid);
        let record = encode_record(&product.into_record());
        self.single(key.shard(), vec![Check::Exists(key.clone())], vec![Effect::Put(key, record)]).await
    }

    /// Deletes product `pid` (404 if absent, 400 if some order holds it).
    pub async fn delete_product(&self, pid: u64) -> Result<(), ShopError> {
        let key = RowKey::Product(pid);
        let checks = vec![Check::Exists(key.clone()), Check::NoOrdersOfProduct(pid)];
        self.single(key.shard(), checks, vec![Effect::Delete(key)]).await
    }

    /// Creates order `oid` for client `cid`: the client must exist, the OID
    /// be new, every product exist with enough stock; repeated PIDs are
    /// summed; each line copies the product's current price.
    pub async fn create_order(&self, oid: u64, cid: u64, items: Vec<ItemRequest>) -> Result<(), ShopError> {
        let wanted = sum_items(&items)?;
        if wanted.is_empty() {
            return Err(ShopError::BadRequest("an order needs at least one product".into()));
        }
        if let Some(item) = items.iter().find(|i| i.quantity == 0) {
            return Err(ShopError::BadRequest(format!("the quantity of product {} must be above 0", item.pid)));
        }
        let give_up = Instant::now() + self.deadline;
        loop {
            let prices = self.prices(wanted.keys().copied(), give_up).await?;
            let lines: Vec<OrderLine> = wanted
                .iter()
                .map(|(pid, quantity)| OrderLine { pid: *pid, quantity: *quantity, price: prices[pid] })
                .collect();
            let mut plan = Plan::default();
            plan.check(Shard::of_id(cid), Check::Exists(RowKey::Client(cid)))
                .effect(Shard::of_id(cid), Effect::Put(RowKey::ClientOrder(cid, oid), Vec::new()))
                .check(Shard::of_id(oid), Check::Absent(RowKey::Order(oid)))
                .effect(Shard::of_id(oid), Effect::Put(RowKey::Order(oid), encode_record(&OrderRecord { cid, lines })));
            for (pid, quantity) in &wanted {
                let shard = Shard::of_id(*pid);
                plan.check(shard, Check::ProductPrice { pid: *pid, price: prices[pid] })
                    .effect(shard, Effect::AdjustStock { pid: *pid, delta: -signed(*quantity)? })
                    .effect(shard, Effect::Put(RowKey::ProductOrder(*pid, oid), Vec::new()));
            }
            match txn::run(&self.cluster, &plan, Shard::of_id(oid), give_up).await {
                Err(TxnFailure::Stale(_)) if Instant::now() < give_up => continue,
                outcome => return outcome.map_err(failure_to_error),
            }
        }
    }

    /// The order `oid` with product names and total, `None` if absent.
    pub async fn get_order(&self, oid: u64) -> Result<Option<OrderView>, ShopError> {
        let give_up = Instant::now() + self.deadline;
        let Some((order, _)) = self.read_order(oid, give_up).await? else {
            return Ok(None);
        };
        let names = self.names(order.lines.iter().map(|l| l.pid), give_up).await?;
        Ok(Some(view(oid, order, &names)))
    }

    /// Sets new absolute quantities on order `oid` of client `cid` (a PID
    /// listed twice counts the sum, as in create): 0 removes a line, lines
    /// not listed stay, a new line takes the product's current
    /// price, and stock moves by old - new without ever going negative.
    pub async fn update_order(&self, oid: u64, cid: u64, items: Vec<ItemRequest>) -> Result<(), ShopError> {
        let requested = sum_items(&items)?;
        let give_up = Instant::now() + self.deadline;
        loop {
            let (order, version) = self.owned_order(oid, cid, give_up).await?;
            let added: Vec<u64> =
                requested.iter().filter(|(pid, q)| **q > 0 && order.quantity_of(**pid) == 0).map(|(p, _)| *p).collect();
            let prices = self.prices(added.iter().copied(), give_up).await?;
            let Some(plan) = plan_update(oid, &order, version, &requested, &prices)? else {
                return Ok(()); // nothing changes
            };
            match txn::run(&self.cluster, &plan, Shard::of_id(oid), give_up).await {
                Err(TxnFailure::Stale(_)) if Instant::now() < give_up => continue,
                outcome => return outcome.map_err(failure_to_error),
            }
        }
    }

    /// Deletes order `oid`, restoring its stock (404 if absent).
    pub async fn delete_order(&self, oid: u64) -> Result<(), ShopError> {
        let give_up = Instant::now() + self.deadline;
        loop {
            let Some((order, version)) = self.read_order(oid, give_up).await? else {
                return Err(ShopError::NotFound(format!("order {oid} does not exist")));
            };
            let mut plan = Plan::default();
            plan.check(Shard::of_id(oid), Check::Version(RowKey::Order(oid), version))
                .effect(Shard::of_id(oid), Effect::Delete(RowKey::Order(oid)))
                .effect(Shard::of_id(order.cid), Effect::Delete(RowKey::ClientOrder(order.cid, oid)));
            for line in &order.lines {
                let shard = Shard::of_id(line.pid);
                plan.effect(shard, Effect::AdjustStock { pid: line.pid, delta: signed(line.quantity)? })
                    .effect(shard, Effect::Delete(RowKey::ProductOrder(line.pid, oid)));
            }
            match txn::run(&self.cluster, &plan, Shard::of_id(oid), give_up).await {
                Err(TxnFailure::Stale(_)) if Instant::now() < give_up => continue,
                outcome => return outcome.map_err(failure_to_error),
            }
        }
    }

    /// Every order of client `cid`, from both shards, each as soon as it
    /// arrives. `Err(NotFound)` at once if the client does not exist.
    ///
    /// Scatter-gather: the client's order index names the orders; one task
    /// per shard fetches that shard's orders (and their product names) and
    /// streams each as it is ready, until the deadline.
    pub async fn client_orders(&self, cid: u64) -> Result<BoxStream<'static, Result<OrderView, ShopError>>, ShopError> {
        let give_up = Instant::now() + self.deadline;
        if self.read_row(RowKey::Client(cid), give_up).await?.is_none() {
            return Err(ShopError::NotFound(format!("client {cid} does not exist")));
        }
        let oids = match self.read(Shard::of_id(cid), Query::OrdersOfClient(cid), give_up).await? {
            QueryResult::Ids(oids) => oids,
            other => return Err(ShopError::Internal(format!("unexpected answer {other:?}"))),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for shard in Shard::ALL {
            let mine: Vec<u64> = oids.iter().copied().filter(|oid| Shard::of_id(*oid) == shard).collect();
            if mine.is_empty() {
                continue;
            }
            let (shop, tx) = (self.clone(), tx.clone());
            tokio::spawn(async move {
                let gather = shop.gather_orders(mine, tx.clone(), give_up);
                if tokio::time::timeout_at(give_up, gather).await.is_err() {
                    let late = ShopError::Unavailable(format!("shard {shard} did not answer before the deadline"));
                    let _ = tx.send(Err(late)).await;
                }
            });
        }
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    /// Fetches `oids` (all in one shard) and sends each order as it is ready.
    async fn gather_orders(
        &self,
        oids: Vec<u64>,
        tx: tokio::sync::mpsc::Sender<Result<OrderView, ShopError>>,
        give_up: Instant,
    ) {
        let rows = match self.read_rows(oids.iter().map(|oid| RowKey::Order(*oid)).collect(), give_up).await {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        for (oid, row) in oids.into_iter().zip(rows) {
            // An order deleted since the index was read is simply not listed.
            let Some(row) = row else { continue };
            let order = match decode_record::<OrderRecord>(&row.value) {
                Ok(order) => order,
                Err(e) => {
                    let _ = tx.send(Err(ShopError::Internal(e))).await;
                    continue;
                }
            };
            let item = match self.names(order.lines.iter().map(|l| l.pid), give_up).await {
                Ok(names) => Ok(view(oid, order, &names)),
                Err(e) => Err(e),
            };
            if tx.send(item).await.is_err() {
                return; // the caller went away
            }
        }
    }

    /// Runs a one-shard plan.
    async fn single(&self, shard: Shard, checks: Vec<Check>, effects: Vec<Effect>) -> Result<(), ShopError> {
        let mut plan = Plan::default();
        for check in checks {
            plan.check(shard, check);
        }
        for effect in effects {
            plan.effect(shard, effect);
        }
        let give_up = Instant::now() + self.deadline;
        txn::run(&self.cluster, &plan, shard, give_up).await.map_err(failure_to_error)
    }

    /// Answers a query linearizably, waiting out locks of transactions in
    /// flight until `give_up`.
    async fn read(&self, shard: Shard, query: Query, give_up: Instant) -> Result<QueryResult, ShopError> {
        loop {
            let budget = give_up.saturating_duration_since(Instant::now());
            let answer = self
                .cluster
                .shard(shard)
                .read(&query, budget)
                .await
                .map_err(|e| ShopError::Unavailable(e.to_string()))?;
            match answer {
                QueryResult::Locked { key, .. } if Instant::now() + LOCKED_READ_BACKOFF >= give_up => {
                    return Err(ShopError::Unavailable(format!(
                        "{} stayed locked by a transaction until the deadline",
                        describe(&key)
                    )));
                }
                QueryResult::Locked { .. } => tokio::time::sleep(LOCKED_READ_BACKOFF).await,
                answer => return Ok(answer),
            }
        }
    }

    /// One row, `None` if absent.
    async fn read_row(&self, key: RowKey, give_up: Instant) -> Result<Option<Row>, ShopError> {
        match self.read(key.shard(), Query::Get(key), give_up).await? {
            QueryResult::Row(row) => Ok(row),
            other => Err(ShopError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Several rows, fetched per shard in parallel, in the order asked.
    async fn read_rows(&self, keys: Vec<RowKey>, give_up: Instant) -> Result<Vec<Option<Row>>, ShopError> {
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
    async fn read_order(&self, oid: u64, give_up: Instant) -> Result<Option<(OrderRecord, u64)>, ShopError> {
        match self.read_row(RowKey::Order(oid), give_up).await? {
            Some(row) => Ok(Some((decode_record(&row.value).map_err(ShopError::Internal)?, row.version))),
            None => Ok(None),
        }
    }

    /// Order `oid` if it exists and belongs to `cid`, else 404.
    async fn owned_order(&self, oid: u64, cid: u64, give_up: Instant) -> Result<(OrderRecord, u64), ShopError> {
        match self.read_order(oid, give_up).await? {
            None => Err(ShopError::NotFound(format!("order {oid} does not exist"))),
            Some((order, _)) if order.cid != cid => {
                Err(ShopError::NotFound(format!("order {oid} does not belong to client {cid}")))
            }
            Some(found) => Ok(found),
        }
    }

    /// Current prices of `pids`; 404 naming the first missing product.
    async fn prices(&self, pids: impl Iterator<Item = u64>, give_up: Instant) -> Result<BTreeMap<u64, f64>, ShopError> {
        let products = self.products(pids, give_up).await?;
        products.into_iter().map(|(pid, product)| Ok((pid, product?.price))).collect()
    }

    /// Names of `pids`; a product gone since is named "".
    async fn names(
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
    fn into_record(self) -> ProductRecord {
        ProductRecord { name: self.name, price: self.price, quantity: self.quantity, extra: self.extra }
    }
}

/// Sums repeated PIDs of a request.
fn sum_items(items: &[ItemRequest]) -> Result<BTreeMap<u64, u64>, ShopError> {
    let mut wanted = BTreeMap::new();
    for item in items {
        let total: &mut u64 = wanted.entry(item.pid).or_default();
        *total = total
            .checked_add(item.quantity)
            .ok_or_else(|| ShopError::BadRequest(format!("the quantity of product {} is too large", item.pid)))?;
    }
    Ok(wanted)
}

/// The plan of an order update, `None` if nothing changes.
fn plan_update(
    oid: u64,
    order: &OrderRecord,
    version: u64,
    requested: &BTreeMap<u64, u64>,
    prices: &BTreeMap<u64, f64>,
) -> Result<Option<Plan>, ShopError> {
    let mut lines: BTreeMap<u64, OrderLine> = order.lines.iter().map(|l| (l.pid, l.clone())).collect();
    let mut plan = Plan::default();
    let mut changed = false;
    for (&pid, &quantity) in requested {
        let old = order.quantity_of(pid);
        if old == quantity {
            continue;
        }
        changed = true;
        let shard = Shard::of_id(pid);
        let delta = signed(old)? - signed(quantity)?;
        match (old, quantity) {
            (0, _) => {
                plan.check(shard, Check::ProductPrice { pid, price: prices[&pid] })
                    .effect(shard, Effect::Put(RowKey::ProductOrder(pid, oid), Vec::new()));
                lines.insert(pid, OrderLine { pid, quantity, price: prices[&pid] });
            }
            (_, 0) => {
                plan.effect(shard, Effect::Delete(RowKey::ProductOrder(pid, oid)));
                lines.remove(&pid);
            }
            _ => lines.get_mut(&pid).expect("an existing line").quantity = quantity,
        }
        plan.effect(shard, Effect::AdjustStock { pid, delta });
    }
    if !changed {
        return Ok(None);
    }
    let updated = OrderRecord { cid: order.cid, lines: lines.into_values().collect() };
    plan.check(Shard::of_id(oid), Check::Version(RowKey::Order(oid), version))
        .effect(Shard::of_id(oid), Effect::Put(RowKey::Order(oid), encode_record(&updated)));
    Ok(Some(plan))
}

/// A quantity as a stock delta.
fn signed(quantity: u64) -> Result<i64, ShopError> {
    i64::try_from(quantity).map_err(|_| ShopError::BadRequest(format!("quantity {quantity} is too large")))
}

/// An order with product names and its total.
fn view(oid: u64, order: OrderRecord, names: &BTreeMap<u64, String>) -> OrderView {
    let lines: Vec<OrderLineView> = order
        .lines
        .into_iter()
        .map(|l| OrderLineView {
            pid: l.pid,
            name: names.get(&l.pid).cloned().unwrap_or_default(),
            quantity: l.quantity,
            price: l.price,
        })
        .collect();
    let total = lines.iter().map(|l| l.quantity as f64 * l.price).sum();
    OrderView { oid, cid: order.cid, lines, total }
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
            ShopError::Unavailable(format!("{detail}; the change may or may not have been made"))
        }
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
        r @ (Rejection::InsufficientStock { .. } | Rejection::ClientHasOrders(_) | Rejection::ProductInOrders(_)) => {
            ShopError::BadRequest(r.to_string())
        }
        r @ (Rejection::Invalid(_) | Rejection::Corrupt { .. }) => ShopError::Internal(r.to_string()),
    }
}
