//! RetrieveClientOrders: a client's orders from both shards, streamed as
//! they arrive, bounded per call.
//!
//! Scatter-gather (seed 003's dispatcher): the client's order index names
//! the orders; one task per shard fetches that shard's orders, at most
//! `ORDERS_PER_READ` per read, with their product names, and sends each as
//! soon as it is ready, until the call's deadline. A call lists at most
//! [`MAX_LISTED_ORDERS`] orders (the first by OID); a client with more gets
//! those, then a last item, `TooLarge`, saying how many were left out.

use futures::stream::BoxStream;
use futures::StreamExt;
use storage_node::command::{Query, QueryResult, RowKey};
use storage_node::records::shop::{decode_record, OrderRecord};
use storage_node::Shard;
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use crate::orders::view;
use crate::shop::{OrderView, Shop, ShopError};

/// Most orders one RetrieveClientOrders call lists (those with the lowest
/// OIDs); a client with more gets them, then the stream ends with a
/// `RESOURCE_EXHAUSTED` status that says how many were left out. Bounds the
/// work and the memory of one call.
pub const MAX_LISTED_ORDERS: usize = 10_000;

/// Orders fetched by one read while listing a client's orders: keeps each
/// read's reply small, and the first orders flowing early.
const ORDERS_PER_READ: usize = 100;

impl Shop {
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
        let cap = self.max_listed_orders;
        let (oids, left_out) = listed(oids, cap);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut gathers = Vec::new();
        for shard in Shard::ALL {
            let mine: Vec<u64> = oids.iter().copied().filter(|oid| Shard::of_id(*oid) == shard).collect();
            if mine.is_empty() {
                continue;
            }
            let (shop, tx) = (self.clone(), tx.clone());
            gathers.push(tokio::spawn(storage_node::request_id::propagate(async move {
                let gather = shop.gather_orders(cid, mine, tx.clone(), give_up);
                if tokio::time::timeout_at(give_up, gather).await.is_err() {
                    let late = ShopError::Unavailable(format!("shard {shard} did not answer before the deadline"));
                    let _ = tx.send(Err(late)).await;
                }
            })));
        }
        if left_out > 0 {
            // The stream's last item says what was left out.
            tokio::spawn(async move {
                futures::future::join_all(gathers).await;
                let total = oids.len() + left_out;
                let note = format!(
                    "client {cid} has {total} orders; one call lists at most {cap} (the first by OID), so \
                     {left_out} were left out"
                );
                let _ = tx.send(Err(ShopError::TooLarge(note))).await;
            });
        }
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    /// Fetches client `cid`'s orders `oids` (all in one shard) and sends
    /// each order as it is ready.
    async fn gather_orders(
        &self,
        cid: u64,
        oids: Vec<u64>,
        tx: Sender<Result<OrderView, ShopError>>,
        give_up: Instant,
    ) {
        for chunk in oids.chunks(ORDERS_PER_READ) {
            if !self.gather_chunk(cid, chunk, &tx, give_up).await {
                return;
            }
        }
    }

    /// Fetches and sends client `cid`'s orders `oids`; false if the caller
    /// went away or the read failed (the failure is sent).
    async fn gather_chunk(
        &self,
        cid: u64,
        oids: &[u64],
        tx: &Sender<Result<OrderView, ShopError>>,
        give_up: Instant,
    ) -> bool {
        let rows = match self.read_rows(oids.iter().map(|oid| RowKey::Order(*oid)).collect(), give_up).await {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return false;
            }
        };
        for (oid, row) in oids.iter().copied().zip(rows) {
            // An order deleted since the index was read is simply not listed.
            let Some(row) = row else { continue };
            let order = match decode_record::<OrderRecord>(&row.value) {
                Ok(order) => order,
                Err(e) => {
                    let _ = tx.send(Err(ShopError::Internal(e))).await;
                    continue;
                }
            };
            // Nor is one deleted since and whose OID a new order of another
            // client took: the listing reads orders after their index.
            if order.cid != cid {
                continue;
            }
            let item = match self.names(order.lines.iter().map(|l| l.pid), give_up).await {
                Ok(names) => Ok(view(oid, order, &names)),
                Err(e) => Err(e),
            };
            if tx.send(item).await.is_err() {
                return false; // the caller went away
            }
        }
        true
    }
}

/// The first `cap` of `oids`, and how many were left out.
fn listed(mut oids: Vec<u64>, cap: usize) -> (Vec<u64>, usize) {
    let left_out = oids.len().saturating_sub(cap);
    oids.truncate(cap);
    (oids, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_is_cut_at_its_cap() {
        assert_eq!(listed(vec![1, 2, 3], 5), (vec![1, 2, 3], 0));
        assert_eq!(listed(vec![1, 2, 3, 4, 5, 6], 4), (vec![1, 2, 3, 4], 2));
    }
}
