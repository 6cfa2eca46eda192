//! The seed's two gRPC services, as thin handlers: parse the request into
//! typed values (a 400 if it cannot be), call the [`Shop`], encode the
//! answer. Calls that return a `Reply` carry every failure in it, with the
//! API's codes; retrieves answer the zero object for a missing entity and a
//! gRPC status only for what has no zero object (a malformed ID, no quorum).
//!
//! Each call first takes one of [`MAX_CALLS_IN_FLIGHT`] permits; when none
//! is left the call is shed at once (a `Reply` with 503, or `UNAVAILABLE`
//! for retrieves) instead of queueing behind the others. Writes read the
//! optional `idempotency-key` metadata ([`crate::idempotency`]).

use std::sync::Arc;

use futures::StreamExt;
use raftshop_proto::api::{admin_portal_server::AdminPortal, order_portal_server::OrderPortal};
use raftshop_proto::api::{Client, Id, Order, Product, Reply};
use serde_json::{json, Map, Value};
use storage_node::records::shop::ProductRecord;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use crate::idempotency::IdempotencyKey;
use crate::request::{self, BadRequest, Quantities};
use crate::shop::{OrderView, Shop, ShopError};

/// Most calls one portal serves at once. Each holds little (a plan, a few
/// rows), so this bounds the portal's memory and the load it puts on the
/// shards; beyond it a call is answered 503 at once, which tells a client
/// to back off sooner than a queue would.
pub const MAX_CALLS_IN_FLIGHT: usize = 1024;

impl From<BadRequest> for ShopError {
    fn from(error: BadRequest) -> Self {
        ShopError::BadRequest(error.0)
    }
}

/// The answer of a call that returns a `Reply`.
fn reply(outcome: Result<(), ShopError>) -> Response<Reply> {
    let reply = match outcome {
        Ok(()) => Reply { error: 0, description: None },
        Err(error) => {
            tracing::debug!(code = error.code(), %error, "call refused");
            Reply { error: error.code(), description: Some(error.to_string()) }
        }
    };
    Response::new(reply)
}

/// The gRPC status of a retrieve that cannot answer with an object.
fn status(error: ShopError) -> Status {
    match error {
        ShopError::BadRequest(m) => Status::invalid_argument(m),
        ShopError::NotFound(m) => Status::not_found(m),
        ShopError::TooLarge(m) => Status::resource_exhausted(m),
        ShopError::Unavailable(m) => Status::unavailable(m),
        ShopError::Internal(m) => Status::internal(m),
    }
}

/// A product's `data` for callers: its fields, PID, name, price, quantity.
pub fn product_json(pid: u64, product: &ProductRecord) -> String {
    let mut object: Map<String, Value> = serde_json::from_str(&product.extra).unwrap_or_default();
    object.insert("PID".into(), json!(pid.to_string()));
    object.insert("name".into(), json!(product.name));
    object.insert("price".into(), json!(product.price));
    object.insert("quantity".into(), json!(product.quantity));
    Value::Object(object).to_string()
}

/// An order's `data` for callers: lines with names, prices and the total.
pub fn order_json(order: &OrderView) -> String {
    let products: Vec<Value> = order
        .lines
        .iter()
        .map(|l| json!({"PID": l.pid.to_string(), "name": l.name, "quantity": l.quantity, "price": l.price}))
        .collect();
    json!({"OID": order.oid.to_string(), "CID": order.cid.to_string(), "products": products, "total": order.total})
        .to_string()
}

fn order_message(order: &OrderView) -> Order {
    Order { oid: order.oid.to_string(), cid: order.cid.to_string(), data: order_json(order) }
}

/// AdminPortal and OrderPortal over one [`Shop`].
#[derive(Clone)]
pub struct Portal {
    /// The shop every call goes through.
    pub shop: Shop,
    /// One permit per call in flight; none left means shed.
    admission: Arc<Semaphore>,
    /// How many permits there are, for the shed call's sentence.
    limit: usize,
}

impl Portal {
    /// A portal over `shop`, serving at most [`MAX_CALLS_IN_FLIGHT`] calls
    /// at once.
    pub fn new(shop: Shop) -> Self {
        Self::with_limit(shop, MAX_CALLS_IN_FLIGHT)
    }

    /// A portal over `shop`, serving at most `calls` at once.
    pub fn with_limit(shop: Shop, calls: usize) -> Self {
        Portal { shop, admission: Arc::new(Semaphore::new(calls)), limit: calls }
    }

    /// A permit for one call, or the 503 that sheds it.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ShopError> {
        self.admission.clone().try_acquire_owned().map_err(|_| {
            ShopError::Unavailable(format!(
                "the portal is serving its limit of {} calls at once; try again shortly",
                self.limit
            ))
        })
    }

    /// Runs a write admitted, with the caller's idempotency key.
    async fn write<F, Fut>(&self, metadata: &tonic::metadata::MetadataMap, call: F) -> Response<Reply>
    where
        F: FnOnce(Option<IdempotencyKey>) -> Fut,
        Fut: std::future::Future<Output = Result<(), ShopError>>,
    {
        let permit = match self.admit() {
            Ok(permit) => permit,
            Err(shed) => return reply(Err(shed)),
        };
        let outcome = match IdempotencyKey::from_metadata(metadata) {
            Ok(key) => call(key).await,
            Err(bad) => Err(bad.into()),
        };
        drop(permit);
        reply(outcome)
    }
}

#[tonic::async_trait]
impl AdminPortal for Portal {
    async fn create_client(&self, request: Request<Client>) -> Result<Response<Reply>, Status> {
        let (metadata, _, client) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                let cid = request::parse_id("CID", &client.cid)?;
                self.shop.create_client(cid, request::client_document(cid, &client.data)?, key.as_ref()).await
            })
            .await)
    }

    async fn retrieve_client(&self, request: Request<Id>) -> Result<Response<Client>, Status> {
        let _permit = self.admit().map_err(status)?;
        let cid = request::parse_id("CID", &request.into_inner().id).map_err(|e| status(e.into()))?;
        let client = match self.shop.get_client(cid).await.map_err(status)? {
            Some(record) => Client { cid: cid.to_string(), data: record.document },
            None => Client { cid: "0".into(), data: String::new() },
        };
        Ok(Response::new(client))
    }

    async fn update_client(&self, request: Request<Client>) -> Result<Response<Reply>, Status> {
        let (metadata, _, client) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                let cid = request::parse_id("CID", &client.cid)?;
                self.shop.update_client(cid, request::client_document(cid, &client.data)?, key.as_ref()).await
            })
            .await)
    }

    async fn delete_client(&self, request: Request<Id>) -> Result<Response<Reply>, Status> {
        let (metadata, _, id) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                self.shop.delete_client(request::parse_id("CID", &id.id)?, key.as_ref()).await
            })
            .await)
    }

    async fn create_product(&self, request: Request<Product>) -> Result<Response<Reply>, Status> {
        let (metadata, _, product) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                let pid = request::parse_id("PID", &product.pid)?;
                self.shop.create_product(pid, request::product(pid, &product.data)?, key.as_ref()).await
            })
            .await)
    }

    async fn retrieve_product(&self, request: Request<Id>) -> Result<Response<Product>, Status> {
        let _permit = self.admit().map_err(status)?;
        let pid = request::parse_id("PID", &request.into_inner().id).map_err(|e| status(e.into()))?;
        let product = match self.shop.get_product(pid).await.map_err(status)? {
            Some(record) => Product { pid: pid.to_string(), data: product_json(pid, &record) },
            None => Product { pid: "0".into(), data: String::new() },
        };
        Ok(Response::new(product))
    }

    async fn update_product(&self, request: Request<Product>) -> Result<Response<Reply>, Status> {
        let (metadata, _, product) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                let pid = request::parse_id("PID", &product.pid)?;
                self.shop.update_product(pid, request::product(pid, &product.data)?, key.as_ref()).await
            })
            .await)
    }

    async fn delete_product(&self, request: Request<Id>) -> Result<Response<Reply>, Status> {
        let (metadata, _, id) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                self.shop.delete_product(request::parse_id("PID", &id.id)?, key.as_ref()).await
            })
            .await)
    }
}

/// A stream of a client's orders.
pub type OrderStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Order, Status>> + Send>>;

#[tonic::async_trait]
impl OrderPortal for Portal {
    type RetrieveClientOrdersStream = OrderStream;

    async fn create_order(&self, request: Request<Order>) -> Result<Response<Reply>, Status> {
        let (metadata, _, order) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                let oid = request::parse_id("OID", &order.oid)?;
                let cid = request::parse_id("CID", &order.cid)?;
                let items = request::order_items(oid, cid, &order.data, Quantities::Positive)?;
                self.shop.create_order(oid, cid, items, key.as_ref()).await
            })
            .await)
    }

    async fn retrieve_order(&self, request: Request<Id>) -> Result<Response<Order>, Status> {
        let _permit = self.admit().map_err(status)?;
        let oid = request::parse_id("OID", &request.into_inner().id).map_err(|e| status(e.into()))?;
        let order = match self.shop.get_order(oid).await.map_err(status)? {
            Some(view) => order_message(&view),
            None => Order { oid: "0".into(), cid: String::new(), data: String::new() },
        };
        Ok(Response::new(order))
    }

    async fn update_order(&self, request: Request<Order>) -> Result<Response<Reply>, Status> {
        let (metadata, _, order) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                let oid = request::parse_id("OID", &order.oid)?;
                let cid = request::parse_id("CID", &order.cid)?;
                let items = request::order_items(oid, cid, &order.data, Quantities::NonNegative)?;
                self.shop.update_order(oid, cid, items, key.as_ref()).await
            })
            .await)
    }

    async fn delete_order(&self, request: Request<Id>) -> Result<Response<Reply>, Status> {
        let (metadata, _, id) = request.into_parts();
        Ok(self
            .write(&metadata, |key| async move {
                self.shop.delete_order(request::parse_id("OID", &id.id)?, key.as_ref()).await
            })
            .await)
    }

    async fn retrieve_client_orders(&self, request: Request<Id>) -> Result<Response<OrderStream>, Status> {
        let permit = self.admit().map_err(status)?;
        let cid = request::parse_id("CID", &request.into_inner().id).map_err(|e| status(e.into()))?;
        let orders = self.shop.client_orders(cid).await.map_err(status)?;
        // The stream holds the call's permit until it ends.
        let stream = orders.map(move |item| {
            let _held = &permit;
            item.map(|view| order_message(&view)).map_err(status)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
