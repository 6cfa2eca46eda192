//! Every RPC of both portals, success and failure paths, through real gRPC
//! clients against real processes — once under the seed's package-less
//! service names and once under the course's `project.` names.

mod common;

use common::{channel, shop_cluster};

/// The whole matrix for one generated client module (`api` or `project`).
macro_rules! api_matrix {
    ($test:ident, $module:ident, $base:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            use raftshop_proto::$module::{
                admin_portal_client::AdminPortalClient, order_portal_client::OrderPortalClient, Client, Id, Order,
                Product,
            };
            use serde_json::Value;

            let cluster = shop_cluster().await;
            let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
            let mut orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);
            let base: u64 = $base;
            let id = |n: u64| (base + n).to_string();
            let client = |n: u64, data: &str| Client { cid: id(n), data: data.to_string() };
            let product = |n: u64, data: &str| Product { pid: id(n), data: data.to_string() };
            let order = |o: u64, c: u64, data: &str| Order { oid: id(o), cid: id(c), data: data.to_string() };
            let ident = |n: u64| Id { id: id(n) };
            let code = |reply: tonic::Response<raftshop_proto::$module::Reply>| {
                let reply = reply.into_inner();
                (reply.error, reply.description.unwrap_or_default())
            };

            // --- clients (client 2 even, client 3 odd)
            assert_eq!(code(admin.create_client(client(2, r#"{"name":"Ana"}"#)).await.unwrap()).0, 0);
            assert_eq!(code(admin.create_client(client(3, r#"{"name":"Bia"}"#)).await.unwrap()).0, 0);
            let (error, why) = code(admin.create_client(client(2, r#"{"name":"Ana"}"#)).await.unwrap());
            assert_eq!(error, 400, "duplicate client: {why}");
            assert!(why.contains("already exists"), "{why}");
            let bad_id = Client { cid: "seven".into(), data: r#"{"name":"x"}"#.into() };
            let (error, why) = code(admin.create_client(bad_id).await.unwrap());
            assert_eq!((error, why.contains("CID must be a decimal integer")), (400, true), "{why}");
            assert_eq!(code(admin.create_client(client(4, "{oops")).await.unwrap()).0, 400);
            assert_eq!(code(admin.create_client(client(4, r#"{"city":"x"}"#)).await.unwrap()).0, 400);
            let got = admin.retrieve_client(ident(2)).await.unwrap().into_inner();
            assert_eq!(got.cid, id(2));
            assert_eq!(serde_json::from_str::<Value>(&got.data).unwrap()["name"], "Ana");
            let missing = admin.retrieve_client(ident(99)).await.unwrap().into_inner();
            assert_eq!((missing.cid.as_str(), missing.data.as_str()), ("0", ""), "missing: the zero object");
            let status = admin.retrieve_client(Id { id: "x".into() }).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(code(admin.update_client(client(2, r#"{"name":"Ana Maria"}"#)).await.unwrap()).0, 0);
            let got = admin.retrieve_client(ident(2)).await.unwrap().into_inner();
            assert_eq!(serde_json::from_str::<Value>(&got.data).unwrap()["name"], "Ana Maria");
            assert_eq!(code(admin.update_client(client(99, r#"{"name":"x"}"#)).await.unwrap()).0, 404);

            // --- products (1 odd, 2 even, 5 odd)
            let p1 = r#"{"name":"pen","price":2.5,"quantity":8}"#;
            let p2 = r#"{"name":"ink","price":"3","quantity":"9"}"#;
            assert_eq!(code(admin.create_product(product(1, p1)).await.unwrap()).0, 0);
            assert_eq!(code(admin.create_product(product(2, p2)).await.unwrap()).0, 0);
            assert_eq!(code(admin.create_product(product(1, p1)).await.unwrap()).0, 400);
            let negative = r#"{"name":"x","price":-1,"quantity":1}"#;
            assert_eq!(code(admin.create_product(product(5, negative)).await.unwrap()).0, 400);
            let fractional = r#"{"name":"x","price":1,"quantity":1.5}"#;
            assert_eq!(code(admin.create_product(product(5, fractional)).await.unwrap()).0, 400);
            let got = admin.retrieve_product(ident(2)).await.unwrap().into_inner();
            let data: Value = serde_json::from_str(&got.data).unwrap();
            assert_eq!((data["price"].as_f64(), data["quantity"].as_u64()), (Some(3.0), Some(9)));
            assert_eq!(admin.retrieve_product(ident(98)).await.unwrap().into_inner().pid, "0");
            let p5 = r#"{"name":"cap","price":1,"quantity":1}"#;
            assert_eq!(code(admin.update_product(product(5, p5)).await.unwrap()).0, 404);

            // --- orders (order 10 even: client 3 odd, products 1 odd + 2 even)
            let items = format!(r#"[{{"id":{},"quantity":3}},{{"id":{},"quantity":2}}]"#, id(1), id(2));
            assert_eq!(code(orders.create_order(order(10, 3, &items)).await.unwrap()), (0, String::new()));
            assert_eq!(code(orders.create_order(order(10, 3, &items)).await.unwrap()).0, 400, "OID exists");
            assert_eq!(code(orders.create_order(order(12, 99, &items)).await.unwrap()).0, 404, "no client");
            let ghost = r#"[{"id":97,"quantity":1}]"#;
            assert_eq!(code(orders.create_order(order(12, 3, ghost)).await.unwrap()).0, 404, "no product");
            let greedy = format!(r#"[{{"id":{},"quantity":100}}]"#, id(1));
            let (error, why) = code(orders.create_order(order(12, 3, &greedy)).await.unwrap());
            assert_eq!(error, 400, "stock");
            assert!(why.contains("in stock"), "{why}");
            let zero = format!(r#"[{{"id":{},"quantity":0}}]"#, id(1));
            assert_eq!(code(orders.create_order(order(12, 3, &zero)).await.unwrap()).0, 400);
            let official = format!(
                r#"{{"OID":"{}","CID":"{}","products":[{{"PID":"{}","quantity":"1"}}]}}"#,
                id(12),
                id(2),
                id(2)
            );
            assert_eq!(code(orders.create_order(order(12, 2, &official)).await.unwrap()).0, 0, "official shape");

            let got = orders.retrieve_order(ident(10)).await.unwrap().into_inner();
            let data: Value = serde_json::from_str(&got.data).unwrap();
            assert_eq!(data["total"].as_f64(), Some(3.0 * 2.5 + 2.0 * 3.0));
            let names: Vec<&str> =
                data["products"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
            assert_eq!(names.len(), 2);
            assert!(names.contains(&"pen") && names.contains(&"ink"), "{names:?}");
            assert_eq!(orders.retrieve_order(ident(96)).await.unwrap().into_inner().oid, "0");

            let update = format!(r#"[{{"id":{},"quantity":1}}]"#, id(1));
            assert_eq!(code(orders.update_order(order(10, 3, &update)).await.unwrap()).0, 0);
            assert_eq!(code(orders.update_order(order(10, 2, &update)).await.unwrap()).0, 404, "not this client's");
            assert_eq!(code(orders.update_order(order(95, 3, &update)).await.unwrap()).0, 404, "no order");
            let negative = format!(r#"[{{"id":{},"quantity":-1}}]"#, id(1));
            assert_eq!(code(orders.update_order(order(10, 3, &negative)).await.unwrap()).0, 400);
            let too_many = format!(r#"[{{"id":{},"quantity":50}}]"#, id(2));
            assert_eq!(code(orders.update_order(order(10, 3, &too_many)).await.unwrap()).0, 400);
            let stock = |data: &str| serde_json::from_str::<Value>(data).unwrap()["quantity"].as_u64().unwrap();
            assert_eq!(stock(&admin.retrieve_product(ident(1)).await.unwrap().into_inner().data), 7, "8 - 1");

            // --- a client's orders, from both shards
            assert_eq!(code(orders.create_order(order(11, 3, &update)).await.unwrap()).0, 0);
            let mut stream = orders.retrieve_client_orders(ident(3)).await.unwrap().into_inner();
            let mut oids = Vec::new();
            while let Some(o) = stream.message().await.unwrap() {
                oids.push(o.oid);
            }
            oids.sort();
            assert_eq!(oids, vec![id(10), id(11)], "orders 10 (even) and 11 (odd)");
            let status = match orders.retrieve_client_orders(ident(99)).await {
                Err(status) => status,
                Ok(response) => response.into_inner().message().await.unwrap_err(),
            };
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

            // --- deletes, and what they must refuse
            assert_eq!(code(admin.delete_client(ident(3)).await.unwrap()).0, 400, "client 3 has orders");
            assert_eq!(code(admin.delete_product(ident(1)).await.unwrap()).0, 400, "product 1 is ordered");
            assert_eq!(code(orders.delete_order(ident(10)).await.unwrap()).0, 0);
            assert_eq!(code(orders.delete_order(ident(10)).await.unwrap()).0, 404);
            assert_eq!(code(orders.delete_order(ident(11)).await.unwrap()).0, 0);
            assert_eq!(stock(&admin.retrieve_product(ident(1)).await.unwrap().into_inner().data), 8, "restored");
            assert_eq!(code(admin.delete_product(ident(1)).await.unwrap()).0, 0);
            assert_eq!(code(admin.delete_product(ident(1)).await.unwrap()).0, 404);
            assert_eq!(code(admin.delete_client(ident(3)).await.unwrap()).0, 0);
            assert_eq!(code(admin.delete_client(ident(3)).await.unwrap()).0, 404);
            drop(cluster);
        }
    };
}

api_matrix!(every_rpc_under_the_seed_names, api, 1000);
api_matrix!(every_rpc_under_the_project_names, project, 2000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_test_scenario_ends_as_expected() {
    use raftshop_proto::api::{admin_portal_client::AdminPortalClient, order_portal_client::OrderPortalClient};
    use raftshop_proto::api::{Client, Id, Order, Product};
    use serde_json::Value;

    let cluster = shop_cluster().await;
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let mut orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);
    let ok = |reply: tonic::Response<raftshop_proto::api::Reply>| {
        let reply = reply.into_inner();
        assert_eq!(reply.error, 0, "{:?}", reply.description);
    };
    let id = |n: &str| Id { id: n.into() };

    // Client 44 and product 13: create, retrieve, update, delete.
    ok(admin.create_client(Client { cid: "44".into(), data: r#"{"name":"Zé"}"#.into() }).await.unwrap());
    assert_eq!(admin.retrieve_client(id("44")).await.unwrap().into_inner().cid, "44");
    ok(admin.update_client(Client { cid: "44".into(), data: r#"{"name":"José"}"#.into() }).await.unwrap());
    ok(admin.delete_client(id("44")).await.unwrap());
    assert_eq!(admin.retrieve_client(id("44")).await.unwrap().into_inner().cid, "0");
    let p13 = r#"{"name":"lápis","price":1.5,"quantity":3}"#;
    ok(admin.create_product(Product { pid: "13".into(), data: p13.into() }).await.unwrap());
    assert_eq!(admin.retrieve_product(id("13")).await.unwrap().into_inner().pid, "13");
    let p13b = r#"{"name":"lápis","price":2,"quantity":5}"#;
    ok(admin.update_product(Product { pid: "13".into(), data: p13b.into() }).await.unwrap());
    ok(admin.delete_product(id("13")).await.unwrap());
    assert_eq!(admin.retrieve_product(id("13")).await.unwrap().into_inner().pid, "0");

    // Client 2, product 1 (2.5 x 8), product 2 (3 x 9), order 10.
    ok(admin.create_client(Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() }).await.unwrap());
    ok(admin
        .create_product(Product { pid: "1".into(), data: r#"{"name":"um","price":2.5,"quantity":8}"#.into() })
        .await
        .unwrap());
    ok(admin
        .create_product(Product { pid: "2".into(), data: r#"{"name":"dois","price":3,"quantity":9}"#.into() })
        .await
        .unwrap());
    let order = |data: &str| Order { oid: "10".into(), cid: "2".into(), data: data.into() };
    ok(orders.create_order(order(r#"[{"id":1,"quantity":3}]"#)).await.unwrap());
    ok(orders.update_order(order(r#"[{"id":1,"quantity":2}]"#)).await.unwrap());
    ok(orders.update_order(order(r#"[{"id":1,"quantity":4}]"#)).await.unwrap());
    ok(orders.update_order(order(r#"[{"id":2,"quantity":5}]"#)).await.unwrap());
    ok(orders.update_order(order(r#"[{"id":1,"quantity":0}]"#)).await.unwrap());
    ok(orders.update_order(order(r#"[{"id":2,"quantity":2},{"id":2,"quantity":4}]"#)).await.unwrap());

    let stock = |data: String| serde_json::from_str::<Value>(&data).unwrap()["quantity"].as_u64().unwrap();
    assert_eq!(stock(admin.retrieve_product(id("1")).await.unwrap().into_inner().data), 8);
    assert_eq!(stock(admin.retrieve_product(id("2")).await.unwrap().into_inner().data), 3);
    let got: Value = serde_json::from_str(&orders.retrieve_order(id("10")).await.unwrap().into_inner().data).unwrap();
    let lines = got["products"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{got}");
    assert_eq!((lines[0]["PID"].as_str(), lines[0]["quantity"].as_u64()), (Some("2"), Some(6)));
    assert_eq!(got["total"].as_f64(), Some(18.0));

    // An order whose products all live in its shard is priced there as it
    // is written, with no price read first: order 20 (even) of product 2
    // (even) takes the price of the moment and keeps it when it changes.
    let even = |oid: &str, items: &str| Order { oid: oid.into(), cid: "2".into(), data: items.into() };
    ok(orders.create_order(even("20", r#"[{"id":2,"quantity":1}]"#)).await.unwrap());
    let dearer = r#"{"name":"dois","price":4.25,"quantity":3}"#;
    ok(admin.update_product(Product { pid: "2".into(), data: dearer.into() }).await.unwrap());
    ok(orders.create_order(even("22", r#"[{"id":2,"quantity":2}]"#)).await.unwrap());
    // Order 24 (even) of products 1 (odd) and 2 (even): the odd shard's
    // prepare quotes product 1's price, and the order keeps it when the
    // price changes afterwards.
    ok(orders.create_order(even("24", r#"[{"id":1,"quantity":2},{"id":2,"quantity":1}]"#)).await.unwrap());
    let dearer = r#"{"name":"um","price":6,"quantity":6}"#;
    ok(admin.update_product(Product { pid: "1".into(), data: dearer.into() }).await.unwrap());
    // An update adds product 1 to order 20 at today's price, quoted by the
    // odd shard; the line of product 2 keeps its price of 3.
    ok(orders.update_order(even("20", r#"[{"id":2,"quantity":1},{"id":1,"quantity":1}]"#)).await.unwrap());
    for (oid, total) in [("20", 3.0 + 6.0), ("22", 2.0 * 4.25), ("24", 2.0 * 2.5 + 4.25)] {
        let got = orders.retrieve_order(id(oid)).await.unwrap().into_inner().data;
        let got: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(got["total"].as_f64(), Some(total), "order {oid}: {got}");
    }
}
