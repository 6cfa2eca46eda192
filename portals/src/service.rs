//! The seed's two gRPC services, as thin handlers: parse the request into
//! typed values (a 400 if it cannot be), call the [`Shop`], encode the
//! answer. Calls that return a `Reply` carry every failure in it, with the
//! API's codes; retrieves answer the zero object for a missing entity and a
//! gRPC status only for what has no zero object (a malformed ID, no quorum).

use futures::StreamExt;
use raftshop_proto::api::{admin_portal_server::AdminPortal, order_portal_server::OrderPortal};
use raftshop_proto::api::{Client, Id, Order, Product, Reply};
use serde_json::{json, Map, Value};
use storage_node::shop::ProductRecord;
use tonic::{Request, Response, Status};

use crate::request::{self, BadRequest, Quantities};
use crate::shop::{OrderView, Shop, ShopError};

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
}

#[tonic::async_trait]
impl AdminPortal for Portal {
    async fn create_client(&self, request: Request<Client>) -> Result<Response<Reply>, Status> {
        let client = request.into_inner();
        Ok(reply(
            async {
                let cid = request::parse_id("CID", &client.cid)?;
                self.shop.create_client(cid, request::client_document(cid, &client.data)?).await
            }
            .await,
        ))
    }

    async fn retrieve_client(&self, request: Request<Id>) -> Result<Response<Client>, Status> {
        let cid = request::parse_id("CID", &request.into_inner().id).map_err(|e| status(e.into()))?;
        let client = match self.shop.get_client(cid).await.map_err(status)? {
            Some(record) => Client { cid: cid.to_string(), data: record.document },
            None => Client { cid: "0".into(), data: String::new() },
        };
        Ok(Response::new(client))
    }

    async fn update_client(&self, request: Request<Client>) -> Result<Response<Reply>, Status> {
        let client = request.into_inner();
        Ok(reply(
            async {
                let cid = request::parse_id("CID", &client.cid)?;
                self.shop.update_client(cid, request::client_document(cid, &client.data)?).await
            }
            .await,
        ))
    }

    async fn delete_client(&self, request: Request<Id>) -> Result<Response<Reply>, Status> {
        let id = request.into_inner().id;
        Ok(reply(async { self.shop.delete_client(request::parse_id("CID", &id)?).await }.await))
    }

    async fn create_product(&self, request: Request<Product>) -> Result<Response<Reply>, Status> {
        let product = request.into_inner();
        Ok(reply(
            async {
                let pid = request::parse_id("PID", &product.pid)?;
                self.shop.create_product(pid, request::product(pid, &product.data)?).await
            }
            .await,
        ))
    }

    async fn retrieve_product(&self, request: Request<Id>) -> Result<Response<Product>, Status> {
        let pid = request::parse_id("PID", &request.into_inner().id).map_err(|e| status(e.into()))?;
        let product = match self.shop.get_product(pid).await.map_err(status)? {
            Some(record) => Product { pid: pid.to_string(), data: product_json(pid, &record) },
            None => Product { pid: "0".into(), data: String::new() },
        };
        Ok(Response::new(product))
    }

    async fn update_product(&self, request: Request<Product>) -> Result<Response<Reply>, Status> {
        let product = request.into_inner();
        Ok(reply(
            async {
                let pid = request::parse_id("PID", &product.pid)?;
                self.shop.update_product(pid, request::product(pid, &product.data)?).await
            }
            .await,
        ))
    }

    async fn delete_product(&self, request: Request<Id>) -> Result<Response<Reply>, Status> {
        let id = request.into_inner().id;
        Ok(reply(async { self.shop.delete_product(request::parse_id("PID", &id)?).await }.await))
    }
}

/// A stream of a client's orders.
pub type OrderStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Order, Status>> + Send>>;

#[tonic::async_trait]
impl OrderPortal for Portal {
    type RetrieveClientOrdersStream = OrderStream;

    async fn create_order(&self, request: Request<Order>) -> Result<Response<Reply>, Status> {
        let order = request.into_inner();
        Ok(reply(
            async {
                let oid = request::parse_id("OID", &order.oid)?;
                let cid = request::parse_id("CID", &order.cid)?;
                let items = request::order_items(oid, cid, &order.data, Quantities::Positive)?;
                self.shop.create_order(oid, cid, items).await
            }
            .await,
        ))
    }

    async fn retrieve_order(&self, request: Request<Id>) -> Result<Response<Order>, Status> {
        let oid = request::parse_id("OID", &request.into_inner().id).map_err(|e| status(e.into()))?;
        let order = match self.shop.get_order(oid).await.map_err(status)? {
            Some(view) => order_message(&view),
            None => Order { oid: "0".into(), cid: String::new(), data: String::new() },
        };
        Ok(Response::new(order))
    }

    async fn update_order(&self, request: Request<Order>) -> Result<Response<Reply>, Status> {
        let order = request.into_inner();
        Ok(reply(
            async {
                let oid = request::parse_id("OID", &order.oid)?;
                let cid = request::parse_id("CID", &order.cid)?;
                let items = request::order_items(oid, cid, &order.data, Quantities::NonNegative)?;
                self.shop.update_order(oid, cid, items).await
            }
            .await,
        ))
    }

    async fn delete_order(&self, request: Request<Id>) -> Result<Response<Reply>, Status> {
        let id = request.into_inner().id;
        Ok(reply(async { self.shop.delete_order(request::parse_id("OID", &id)?).await }.await))
    }

    async fn retrieve_client_orders(&self, request: Request<Id>) -> Result<Response<OrderStream>, Status> {
        let cid = request::parse_id("CID", &request.into_inner().id).map_err(|e| status(e.into()))?;
        let orders = self.shop.client_orders(cid).await.map_err(status)?;
        let stream = orders.map(|item| item.map(|view| order_message(&view)).map_err(status));
        Ok(Response::new(Box::pin(stream)))
    }
}
