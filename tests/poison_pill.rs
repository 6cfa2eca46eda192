//! The poison pill of issue 11, through the portals as a user would send it:
//! two concurrent calls that give stock back to a product whose quantity
//! was set near its limit. Before, both prepared and the second commit
//! overflowed while every replica applied it, so all three panicked, and
//! again at every restart. Now the second return is refused with a 400 and
//! a sentence, and the shard serves on.

mod common;

use common::{channel, shop_cluster};
use raftshop_proto::api::{admin_portal_client::AdminPortalClient, order_portal_client::OrderPortalClient};
use raftshop_proto::api::{Client, Id, Order, Product, Reply};
use storage_node::limits::MAX_QUANTITY;

fn id(n: u64) -> Id {
    Id { id: n.to_string() }
}

fn answer(reply: Reply) -> (i32, String) {
    (reply.error, reply.description.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_stock_past_the_limit_is_refused_and_the_shard_lives() {
    let mut cluster = shop_cluster().await;
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);

    // Client 1 and orders 11 and 13 in shard odd; product 2 in shard even,
    // so every order call is a transaction across both shards.
    let client = Client { cid: "1".into(), data: r#"{"name":"Ana"}"#.into() };
    assert_eq!(answer(admin.create_client(client).await.unwrap().into_inner()).0, 0);
    let product = |quantity: u64| Product {
        pid: "2".into(),
        data: format!(r#"{{"name":"pen","price":1.5,"quantity":{quantity}}}"#),
    };
    assert_eq!(answer(admin.create_product(product(10)).await.unwrap().into_inner()).0, 0);
    for oid in [11, 13] {
        let order = Order { oid: oid.to_string(), cid: "1".into(), data: r#"[{"id":2,"quantity":5}]"#.into() };
        let (error, why) = answer(orders.clone().create_order(order).await.unwrap().into_inner());
        assert_eq!(error, 0, "order {oid}: {why}");
    }

    // Above the limit is refused at the portal, and changes nothing.
    let (error, why) = answer(admin.update_product(product(u64::MAX)).await.unwrap().into_inner());
    assert_eq!(error, 400, "{why}");
    // Near the limit is allowed: the orders still hold 10 units.
    let (error, why) = answer(admin.update_product(product(MAX_QUANTITY - 7)).await.unwrap().into_inner());
    assert_eq!(error, 0, "{why}");

    // Both orders give their 5 units back at once: only one fits.
    let delete = |oid: u64| {
        let mut orders = orders.clone();
        async move { answer(orders.delete_order(id(oid)).await.unwrap().into_inner()) }
    };
    let (first, second) = tokio::join!(delete(11), delete(13));
    let answers = [first, second];
    let done = answers.iter().filter(|(error, _)| *error == 0).count();
    assert_eq!(done, 1, "exactly one return fits under the limit: {answers:?}");
    let (error, why) = answers.iter().find(|(error, _)| *error != 0).unwrap();
    assert_eq!(*error, 400, "{why}");
    assert!(why.contains("limit"), "the refusal says why: {why}");

    let stock = admin.retrieve_product(id(2)).await.unwrap().into_inner();
    let data: serde_json::Value = serde_json::from_str(&stock.data).unwrap();
    assert_eq!(data["quantity"].as_u64(), Some(MAX_QUANTITY - 2), "{}", stock.data);
    common::all_serve_on(&mut cluster, "the stock returns").await;
}
