//! The shop's operations as the portals call them: typed inputs in, typed
//! records out, every business rule enforced inside the storage shards.
//!
//! A [`Shop`] holds no data: each call is planned from fresh linearizable
//! reads and executed as one atomic command on one shard, or as a two-phase
//! commit across both shards when the entities involved live in different
//! shards. See the module `txn` for how that stays atomic when a portal dies.

use std::time::Duration;

use futures::stream::BoxStream;
use storage_node::client::ClusterClient;
use storage_node::shop::{ClientRecord, ProductRecord};

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

/// The shop, as seen from a stateless portal.
pub struct Shop {
    /// Clients of both shards.
    cluster: ClusterClient,
    /// How long one call may take end to end.
    deadline: Duration,
}

impl Shop {
    /// A shop over `cluster`, each call bounded by `deadline`.
    pub fn new(cluster: ClusterClient, deadline: Duration) -> Self {
        Shop { cluster, deadline }
    }

    /// Creates client `cid` with its JSON object `document` (400 if it exists).
    pub async fn create_client(&self, cid: u64, document: String) -> Result<(), ShopError> {
        let _ = (&self.cluster, self.deadline, cid, document);
        todo!("storage side in progress")
    }

    /// The client `cid`, `None` if absent.
    pub async fn get_client(&self, cid: u64) -> Result<Option<ClientRecord>, ShopError> {
        let _ = cid;
        todo!("storage side in progress")
    }

    /// Replaces client `cid`'s document (404 if absent).
    pub async fn update_client(&self, cid: u64, document: String) -> Result<(), ShopError> {
        let _ = (cid, document);
        todo!("storage side in progress")
    }

    /// Deletes client `cid` (404 if absent, 400 if it has orders).
    pub async fn delete_client(&self, cid: u64) -> Result<(), ShopError> {
        let _ = cid;
        todo!("storage side in progress")
    }

    /// Creates product `pid` (400 if it exists).
    pub async fn create_product(&self, pid: u64, product: ProductInput) -> Result<(), ShopError> {
        let _ = (pid, product);
        todo!("storage side in progress")
    }

    /// The product `pid`, `None` if absent.
    pub async fn get_product(&self, pid: u64) -> Result<Option<ProductRecord>, ShopError> {
        let _ = pid;
        todo!("storage side in progress")
    }

    /// Replaces product `pid` (404 if absent); orders keep their prices.
    pub async fn update_product(&self, pid: u64, product: ProductInput) -> Result<(), ShopError> {
        let _ = (pid, product);
        todo!("storage side in progress")
    }

    /// Deletes product `pid` (404 if absent, 400 if some order holds it).
    pub async fn delete_product(&self, pid: u64) -> Result<(), ShopError> {
        let _ = pid;
        todo!("storage side in progress")
    }

    /// Creates order `oid` for client `cid` (rules in mission.md).
    pub async fn create_order(&self, oid: u64, cid: u64, items: Vec<ItemRequest>) -> Result<(), ShopError> {
        let _ = (oid, cid, items);
        todo!("storage side in progress")
    }

    /// The order `oid` with product names and total, `None` if absent.
    pub async fn get_order(&self, oid: u64) -> Result<Option<OrderView>, ShopError> {
        let _ = oid;
        todo!("storage side in progress")
    }

    /// Sets new absolute quantities on order `oid` of client `cid`.
    pub async fn update_order(&self, oid: u64, cid: u64, items: Vec<ItemRequest>) -> Result<(), ShopError> {
        let _ = (oid, cid, items);
        todo!("storage side in progress")
    }

    /// Deletes order `oid`, restoring its stock (404 if absent).
    pub async fn delete_order(&self, oid: u64) -> Result<(), ShopError> {
        let _ = oid;
        todo!("storage side in progress")
    }

    /// Every order of client `cid`, from both shards, each as soon as it
    /// arrives. `Err(NotFound)` at once if the client does not exist.
    pub async fn client_orders(&self, cid: u64) -> Result<BoxStream<'static, Result<OrderView, ShopError>>, ShopError> {
        let _ = cid;
        todo!("storage side in progress")
    }
}
